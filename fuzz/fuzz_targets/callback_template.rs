//! Partner callback URLs (`callbacks::template`): `{name}` placeholders and seed 001's
//! `[%CASHBACK:...%]` macros, the `raw:` opt-out, and static parameters appended to the
//! query.
//!
//! Properties:
//! - `Template::parse` never panics on any text; a refusal names what it refuses: an
//!   unknown macro as it is written in the text, an unterminated one by the byte offset
//!   (a character boundary) where it starts;
//! - a template made of known macros renders as its text with each value encoded exactly
//!   once (raw ones as they are), so every encoded value decodes back to exactly itself;
//! - in a URL template, the rendered URL (with the endpoint's static parameters appended)
//!   parses, every macro's query parameter decodes to exactly its value, every static
//!   parameter arrives exactly, and the fragment is kept.
//!
//! An input starting with `#` is a template's text (the seed corpus: the templates of
//! docs/CALLBACKS.md, the seeds and the tests).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashbackd::callbacks::template::{CASHBACK_MACROS, PLACEHOLDERS, Template, TemplateError, Values, append_params};
use cashbackd::input::encode_component;
use cashbackd_fuzz::{decode_component, tricky_string};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy)]
struct Macro {
    /// Index into PLACEHOLDERS, or into CASHBACK_MACROS when `bracket`.
    index: usize,
    bracket: bool,
    raw: bool,
}

impl Macro {
    fn text(&self) -> String {
        match (self.bracket, self.raw) {
            (false, false) => format!("{{{}}}", PLACEHOLDERS[self.index]),
            (false, true) => format!("{{raw:{}}}", PLACEHOLDERS[self.index]),
            (true, false) => format!("[%{}%]", CASHBACK_MACROS[self.index].0),
            (true, true) => format!("[%RAW:{}%]", CASHBACK_MACROS[self.index].0),
        }
    }

    fn name(&self) -> &'static str {
        if self.bracket { CASHBACK_MACROS[self.index].1 } else { PLACEHOLDERS[self.index] }
    }
}

#[derive(Debug)]
struct Input {
    /// Any text at all, for the parser.
    free: String,
    macros: Vec<Macro>,
    values: Vec<(usize, String)>,
    params: Vec<(String, String)>,
    fragment: Option<String>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut free = String::new();
        for _ in 0..u.int_in_range(0..=6)? {
            match u.int_in_range(0..=3)? {
                0 => free.push_str(&format!("{{{}}}", u.choose(&PLACEHOLDERS)?)),
                1 => free.push_str(&format!("[%{}%]", u.choose(&CASHBACK_MACROS)?.0)),
                _ => free.push_str(&tricky_string(u)?),
            }
        }
        let mut macros = Vec::new();
        for _ in 0..u.int_in_range(0..=6)? {
            let bracket = u.arbitrary()?;
            let len = if bracket { CASHBACK_MACROS.len() } else { PLACEHOLDERS.len() };
            macros.push(Macro { index: u.int_in_range(0..=len - 1)?, bracket, raw: u.ratio(1, 5)? });
        }
        let mut values = Vec::new();
        for _ in 0..u.int_in_range(0..=8)? {
            values.push((u.int_in_range(0..=PLACEHOLDERS.len() - 1)?, tricky_string(u)?));
        }
        let mut params = Vec::new();
        for _ in 0..u.int_in_range(0..=3)? {
            params.push((tricky_string(u)?, tricky_string(u)?));
        }
        let fragment = if u.ratio(1, 4)? { Some(tricky_string(u)?.replace('#', "")) } else { None };
        Ok(Input { free, macros, values, params, fragment })
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let values = PLACEHOLDERS.iter().enumerate().map(|(i, _)| (i, format!("v{i} &=?%41/é"))).collect();
        let free = String::from_utf8_lossy(text).into_owned();
        check(Input { free, macros: Vec::new(), values, params: Vec::new(), fragment: None });
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
});

fn check(input: Input) {
    let text = &input.free;
    match Template::parse(text) {
        Ok(t) => {
            // Without values, a template renders as its literal text only: every piece of
            // it that is not a macro stays.
            let empty = t.render(&Values::new());
            assert!(empty.len() <= text.len(), "{empty:?} from {text:?}");
        }
        Err(TemplateError::Unknown(name)) => {
            assert!(text.contains(&name), "unknown macro {name:?} is not in {text:?}");
            assert!(name.starts_with('{') || name.starts_with("[%"), "{name:?}");
        }
        Err(TemplateError::Unterminated(at)) => {
            assert!(text.is_char_boundary(at), "offset {at} of {text:?}");
            let rest = &text[at..];
            assert!(rest.starts_with('{') || rest.starts_with("[%"), "offset {at} of {text:?}: {rest:?}");
        }
    }

    let mut values = Values::new();
    for (i, v) in &input.values {
        values.insert(PLACEHOLDERS[*i], v.clone());
    }
    let value = |name: &str| values.get(name).cloned().unwrap_or_default();

    // Text of known macros only: parses, renders each value encoded once.
    let mut template = String::new();
    let mut expected = String::new();
    for (i, m) in input.macros.iter().enumerate() {
        template.push_str(&format!("<{i}>"));
        expected.push_str(&format!("<{i}>"));
        template.push_str(&m.text());
        let v = value(m.name());
        expected.push_str(&if m.raw { v } else { encode_component(&v) });
    }
    let parsed = Template::parse(&template).unwrap_or_else(|e| panic!("{template:?}: {e}"));
    assert_eq!(parsed.render(&values), expected);

    // A URL template, with static parameters and a fragment.
    let mut url_template = String::from("https://partner.example/cb?");
    let encoded: Vec<&Macro> = input.macros.iter().filter(|m| !m.raw).collect();
    for (i, m) in encoded.iter().enumerate() {
        url_template.push_str(&format!("m{i}={}&", m.text()));
    }
    url_template.push_str("v=1");
    if let Some(f) = &input.fragment {
        url_template.push('#');
        url_template.push_str(&encode_component(f));
    }
    let rendered = Template::parse(&url_template).expect("known macros").render(&values);
    for m in &encoded {
        let v = value(m.name());
        let e = encode_component(&v);
        assert_eq!(decode_component(&e).as_deref(), Some(v.as_str()), "{e:?}");
    }
    let params: BTreeMap<String, String> = input.params.iter().cloned().collect();
    let full = append_params(&rendered, &params);
    let url = url::Url::parse(&full).unwrap_or_else(|e| panic!("{full:?} is not a URL: {e}"));
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs.len(), encoded.len() + 1 + params.len(), "{full:?}");
    for (i, m) in encoded.iter().enumerate() {
        assert_eq!(pairs[i], (format!("m{i}"), value(m.name())), "{full:?}");
    }
    assert_eq!(pairs[encoded.len()], ("v".to_string(), "1".to_string()));
    let appended: Vec<(String, String)> = pairs[encoded.len() + 1..].to_vec();
    let expected: Vec<(String, String)> = params.into_iter().collect();
    assert_eq!(appended, expected, "static parameters of {full:?}");
    let fragment = url.fragment().map(|f| percent_encoding::percent_decode_str(f).decode_utf8_lossy().into_owned());
    assert_eq!(fragment, input.fragment, "fragment of {full:?}");
}
