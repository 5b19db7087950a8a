//! `ingest::render_click_url`: a tracked link's URL template filled with the click id,
//! ref id and sub ids (seed 003), the values the clicking user controls.
//!
//! Properties:
//! - the template's own text is left as it is and each placeholder is replaced once: the
//!   output equals a single left-to-right pass over the template (a value is never
//!   re-read as template text, even where it completes a placeholder);
//! - each inserted value is encoded exactly once (unreserved characters and `%XX` only)
//!   and decodes back to exactly the input;
//! - in a URL template, the rendered URL parses, and each query parameter and path segment
//!   that held a placeholder decodes (as a browser or a merchant's server reads it) to
//!   exactly the value.
//!
//! An input starting with `#` is lines of text: the template, the click id, the ref id and
//! the five sub ids (the seed corpus: link templates from docs/INGEST.md and the tests).
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use cashbackd::ingest::render_click_url;
use cashbackd::input::encode_component;
use cashbackd_fuzz::{decode_component, tricky_string};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 7] = ["{click_id}", "{ref_id}", "{sub1}", "{sub2}", "{sub3}", "{sub4}", "{sub5}"];

#[derive(Debug)]
struct Input {
    /// Free text and placeholders, concatenated.
    template: String,
    /// The same template as a URL: (parameter name, placeholder index) pairs.
    url_params: Vec<(String, usize)>,
    path_placeholder: Option<usize>,
    click_id: String,
    ref_id: Option<String>,
    subs: Vec<Option<String>>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut template = String::new();
        for _ in 0..u.int_in_range(0..=8)? {
            if u.arbitrary()? {
                template.push_str(u.choose(&NAMES)?);
            } else {
                template.push_str(&tricky_string(u)?);
            }
        }
        let mut url_params = Vec::new();
        for i in 0..u.int_in_range(0..=7)? {
            url_params.push((format!("p{i}"), u.int_in_range(0..=6)?));
        }
        let path_placeholder = if u.arbitrary()? { Some(u.int_in_range(0..=6)?) } else { None };
        let opt = |u: &mut Unstructured<'a>| -> arbitrary::Result<Option<String>> {
            Ok(if u.ratio(3, 4)? { Some(tricky_string(u)?) } else { None })
        };
        let subs = (0..u.int_in_range(0..=6)?).map(|_| opt(u)).collect::<arbitrary::Result<_>>()?;
        Ok(Input { template, url_params, path_placeholder, click_id: tricky_string(u)?, ref_id: opt(u)?, subs })
    }
}

impl Input {
    /// The value each placeholder stands for (absent is empty).
    fn value(&self, index: usize) -> String {
        match index {
            0 => self.click_id.clone(),
            1 => self.ref_id.clone().unwrap_or_default(),
            n => self.subs.get(n - 2).cloned().flatten().unwrap_or_default(),
        }
    }

    fn render(&self, template: &str) -> String {
        render_click_url(template, &self.click_id, self.ref_id.as_deref(), &self.subs)
    }
}

/// The reference: one pass, left to right, placeholders replaced where they stand in the
/// template.
fn single_pass(input: &Input, template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    'scan: while let Some(c) = rest.chars().next() {
        if c == '{' {
            for (i, name) in NAMES.iter().enumerate() {
                if let Some(after) = rest.strip_prefix(name) {
                    out.push_str(&encode_component(&input.value(i)));
                    rest = after;
                    continue 'scan;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#") {
        let text = String::from_utf8_lossy(text);
        let mut lines = text.split('\n').map(str::to_string);
        let template = lines.next().unwrap_or_default();
        let click_id = lines.next().unwrap_or_default();
        let ref_id = lines.next().filter(|r| !r.is_empty());
        let subs = lines.take(5).map(|s| Some(s).filter(|s| !s.is_empty())).collect();
        check(Input { template, url_params: Vec::new(), path_placeholder: None, click_id, ref_id, subs });
    } else if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) {
        check(input);
    }
});

fn check(input: Input) {
    // Each value alone: encoded once, decodes back exactly.
    for i in 0..NAMES.len() {
        let value = input.value(i);
        let encoded = encode_component(&value);
        assert_eq!(
            decode_component(&encoded).as_deref(),
            Some(value.as_str()),
            "{encoded:?} does not decode to the value"
        );
    }

    // Free-form templates: the template's text stays, each placeholder filled once.
    assert_eq!(input.render(&input.template), single_pass(&input, &input.template), "template {:?}", input.template);

    // A URL template: it parses, and every value comes back exactly.
    let mut template = String::from("https://shop.example/p/");
    if let Some(i) = input.path_placeholder {
        template.push_str(NAMES[i]);
        template.push_str("/x");
    }
    template.push('?');
    for (name, i) in &input.url_params {
        template.push_str(&format!("{name}={}&", NAMES[*i]));
    }
    template.push_str("end=1");
    let rendered = input.render(&template);
    let url = url::Url::parse(&rendered).unwrap_or_else(|e| panic!("{rendered:?} is not a URL: {e}"));
    // "." and ".." stay as they are (unreserved), and a URL parser removes them as dot
    // segments whether encoded or not (WHATWG reads %2E as a dot): not a value's round trip.
    if let Some(i) = input.path_placeholder.filter(|i| !matches!(input.value(*i).as_str(), "." | "..")) {
        let segment = url.path_segments().and_then(|mut s| s.nth(1)).expect("the segment is there");
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8().expect("UTF-8");
        assert_eq!(decoded, input.value(i), "path segment of {rendered:?}");
    }
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    assert_eq!(pairs.len(), input.url_params.len() + 1, "one pair per parameter in {rendered:?}");
    for ((name, i), (k, v)) in input.url_params.iter().zip(&pairs) {
        assert_eq!(k, name);
        assert_eq!(*v, input.value(*i), "parameter {name} of {rendered:?}");
    }
}
