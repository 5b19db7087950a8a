//! Offline report files (seed 000: up to 72 hours late; seed 003: up to 14 days).
//!
//! An adapter that declares `[parse-file] split = "csv-records"` gets a file a piece at a
//! time (the header row and up to [`pieces::PIECE_ROWS`] records): the file is read from
//! its source as it goes, and at most three pieces' events are in memory (one recorded,
//! one parsed, one waiting), so a report of a million rows imports in bounded memory. Any
//! other adapter gets the file whole, in one call, as the contract has always said.

use super::pieces::{self, Piece, Plan, Unsplittable};
use super::{Tally, adapter};
use crate::conversions::Service;
use crate::conversions::service::ServiceError;
use crate::plugin::manifest::FileSplit;
use crate::plugin::wit::latest::{self, FileResult};
use crate::plugin::{LoadedPlugin, PluginConfig, PluginRuntime};
use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read, Seek};
use std::path::Path;
use std::sync::Arc;

/// A file row the adapter refused, or an event the ledger refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RowOutcome {
    /// Row number in the file (1-based, header included) when the adapter knows it.
    pub row: Option<u32>,
    /// Why.
    pub reason: String,
}

/// What a file import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FileSummary {
    /// Events the adapter found.
    pub events: u64,
    /// What they did.
    pub tally: Tally,
    /// Rows refused by the adapter, with reasons (a transaction repeated in a later
    /// piece of a file is refused by the host, in the adapter's words).
    pub rejected_rows: Vec<RowOutcome>,
}

/// Where a file's bytes come from: read from the start, and (for a file in pieces) read
/// again by ranges.
pub trait FileSource: Read + Seek + Send {}
impl<T: Read + Seek + Send> FileSource for T {}

/// Parses `contents` with the network's adapter and records every event. `progress` is
/// called with (events recorded, events expected) as they are recorded.
pub async fn import_file(
    service: &Service,
    runtime: &Arc<PluginRuntime>,
    network_id: &str,
    name: &str,
    contents: Vec<u8>,
    progress: impl Fn(u64, u64),
) -> Result<FileSummary, String> {
    import_from(service, runtime, network_id, name, Box::new(Cursor::new(contents)), progress).await
}

/// [`import_file`] on a file on disk, read as the import goes (never whole, when the
/// adapter takes pieces).
pub async fn import_path(
    service: &Service,
    runtime: &Arc<PluginRuntime>,
    network_id: &str,
    path: &Path,
    progress: impl Fn(u64, u64),
) -> Result<FileSummary, String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let file = std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    import_from(service, runtime, network_id, &name, Box::new(file), progress).await
}

/// [`import_file`] on any source. `progress(done, expected)`: `expected` is the file's
/// data rows less those refused so far, so it is an estimate until the last piece is
/// parsed and then the number of events recorded.
pub async fn import_from(
    service: &Service,
    runtime: &Arc<PluginRuntime>,
    network_id: &str,
    name: &str,
    source: Box<dyn FileSource>,
    progress: impl Fn(u64, u64),
) -> Result<FileSummary, String> {
    let (network, plugin, config) = adapter(service, network_id).await?;
    let delimiter = match &plugin.manifest.parse_file {
        Some(p) if p.split == FileSplit::CsvRecords => {
            match p.delimiter_config.as_ref().and_then(|f| network.adapter_config.get(f)) {
                None | Some(serde_json::Value::Null) => Some(b','),
                Some(serde_json::Value::String(d)) if d.len() == 1 && d.is_ascii() => Some(d.as_bytes()[0]),
                // Not a delimiter: the adapter refuses its configuration in its own words,
                // which the whole-file call reports.
                Some(_) => None,
            }
        }
        _ => None,
    };
    let mut source = source;
    if let Some(delimiter) = delimiter {
        // At most half the adapter's input limit per piece: the header rides along.
        let piece_bytes = pieces::PIECE_BYTES.min(plugin.limits.max_input_bytes / 2).max(1);
        let (planned, returned) = tokio::task::spawn_blocking(move || {
            let planned = pieces::plan(&mut source, delimiter, piece_bytes);
            (planned, source)
        })
        .await
        .map_err(|e| format!("import task failed: {e}"))?;
        source = returned;
        match planned {
            Ok(plan) => {
                let job = Job { service, runtime, network: &network.id, plugin, config, name };
                return job.in_pieces(plan, source, progress).await;
            }
            // The adapter's own message (no header row) from the whole-file call.
            Err(Unsplittable::Empty) => {}
            Err(Unsplittable::NotUtf8(row, why)) => return Err(format!("{name}: not UTF-8 (row {row}: {why})")),
            Err(Unsplittable::Io(e)) => return Err(format!("{name}: {e}")),
        }
    }
    let contents = tokio::task::spawn_blocking(move || {
        let mut contents = Vec::new();
        source.rewind().and_then(|()| source.read_to_end(&mut contents)).map(|_| contents)
    })
    .await
    .map_err(|e| format!("import task failed: {e}"))?
    .map_err(|e| format!("{name}: {e}"))?;
    let (rt, p, n) = (runtime.clone(), plugin.clone(), name.to_string());
    let parsed = tokio::task::spawn_blocking(move || rt.parse_file(&p, &config, &n, &contents).result)
        .await
        .map_err(|e| format!("import task failed: {e}"))?
        .map_err(|e| format!("{name}: {e}"))?;
    let total = parsed.events.len() as u64;
    let mut summary = FileSummary {
        events: total,
        rejected_rows: parsed
            .rejected
            .iter()
            .map(|r| RowOutcome { row: Some(r.row), reason: r.reason.clone() })
            .collect(),
        ..FileSummary::default()
    };
    let (events, refused) = adopt(&network.id, parsed.events);
    summary.tally = super::record_events(service, events, crate::conversions::Via::File, progress).await;
    summary.tally.merge(refused);
    Ok(summary)
}

/// Takes events for this network like a postback's or a report page's: an event for
/// another network is refused (it was recorded under that network before).
fn adopt(network: &str, parsed: Vec<latest::ConversionEvent>) -> (Vec<latest::ConversionEvent>, Tally) {
    let mut refused = Tally::default();
    let mut events = Vec::with_capacity(parsed.len());
    for event in parsed {
        let tid = event.transaction_id.clone();
        match crate::plugin::boundary::adopt_event(network, event) {
            Ok(event) => events.push(event),
            Err(why) => refused.record(&Err(ServiceError::Invalid(format!("transaction {tid:?}: {why}")))),
        }
    }
    (events, refused)
}

/// One file import in pieces.
struct Job<'a> {
    service: &'a Service,
    runtime: &'a Arc<PluginRuntime>,
    network: &'a str,
    plugin: Arc<LoadedPlugin>,
    config: PluginConfig,
    name: &'a str,
}

impl Job<'_> {
    /// Parses the pieces on a blocking thread, one piece ahead of the recording, and
    /// records each piece's events before the next piece's: a conversion listed in two
    /// pieces is recorded in file order, and the writer gets a whole piece of conversions
    /// at once to fill its batches.
    async fn in_pieces(
        self,
        mut plan: Plan,
        mut source: Box<dyn FileSource>,
        progress: impl Fn(u64, u64),
    ) -> Result<FileSummary, String> {
        if plan.pieces.is_empty() {
            // A header and nothing else: the adapter still checks the header.
            plan.pieces.push(Piece {
                start: plan.header_end,
                end: plan.header_end,
                first_row: 2,
                rows: 0,
                blank: Vec::new(),
            });
        }
        let plan = Arc::new(plan);
        // Capacity 1: one piece waits while one is recorded and the next is parsed.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, Result<FileResult, String>)>(1);
        let parser = {
            let (rt, plugin, config, name, plan) =
                (self.runtime.clone(), self.plugin.clone(), self.config.clone(), self.name.to_string(), plan.clone());
            tokio::task::spawn_blocking(move || {
                for (i, piece) in plan.pieces.iter().enumerate() {
                    let parsed = match pieces::read_piece(&mut source, &plan, piece) {
                        Ok(bytes) => rt.parse_file(&plugin, &config, &name, &bytes).result.map_err(|e| e.to_string()),
                        Err(e) => Err(format!("reading the file: {e}")),
                    };
                    let failed = parsed.is_err();
                    // The receiver is gone when the import stopped: nothing more to do.
                    if tx.blocking_send((i, parsed)).is_err() || failed {
                        break;
                    }
                }
            })
        };
        let mut summary = FileSummary::default();
        // One row per transaction across pieces (within a piece the adapter sees to it):
        // the one thing that grows with the file, 16 bytes a row reserved at once.
        let data_rows = plan.records - plan.blank;
        let mut seen = Seen::with_capacity(usize::try_from(data_rows).unwrap_or(0));
        let mut refused_rows = 0u64;
        let mut done = 0u64;
        let mut received = 0;
        while let Some((i, parsed)) = rx.recv().await {
            received += 1;
            let piece = &plan.pieces[i];
            let parsed = parsed.map_err(|e| match i {
                0 => format!("{}: {e}", self.name),
                _ => format!(
                    "{}: rows {}-{}: {e}; the rows before {} are recorded (importing the file again records the \
                     rest and changes nothing else)",
                    self.name,
                    piece.first_row,
                    piece.first_row + piece.rows.saturating_sub(1),
                    piece.first_row
                ),
            })?;
            let (events, rejected) = rows_of(piece, parsed, &mut seen);
            refused_rows += rejected.len() as u64;
            summary.rejected_rows.extend(rejected);
            summary.events += events.len() as u64;
            let (events, refused) = adopt(self.network, events);
            refused_rows += refused.rejected;
            let expected = data_rows.saturating_sub(refused_rows);
            let recorded = events.len() as u64;
            let tally = super::record_events(self.service, events, crate::conversions::Via::File, |d, _| {
                progress(done + d, expected.max(done + d))
            })
            .await;
            done += recorded;
            summary.tally.merge(tally);
            summary.tally.merge(refused);
        }
        if received < plan.pieces.len() {
            // The parser stopped without saying why: it panicked.
            let why = match parser.await {
                Err(e) => e.to_string(),
                Ok(()) => "stopped early".into(),
            };
            return Err(format!("{}: import task failed: {why}", self.name));
        }
        Ok(summary)
    }
}

/// A piece's result in file terms: its rejected rows renumbered from the piece's to the
/// file's, and its events, less those whose transaction an earlier piece already had
/// (rejected like the adapter rejects a repeat within a piece).
fn rows_of(piece: &Piece, parsed: FileResult, seen: &mut Seen) -> (Vec<latest::ConversionEvent>, Vec<RowOutcome>) {
    // The adapter numbers the piece's rows as a file of their own: the header is row 1.
    let last = piece.first_row + piece.rows;
    let to_file = |row: u32| Some(piece.first_row + row.checked_sub(2)?).filter(|r| *r < last);
    let mut rejected: Vec<RowOutcome> =
        parsed.rejected.into_iter().map(|r| RowOutcome { row: to_file(r.row), reason: r.reason }).collect();
    // Events come in row order, one per row neither rejected nor blank: that gives each
    // event its row. An adapter that breaks the rule gets no row numbers for repeats.
    let refused: HashSet<u32> = rejected.iter().filter_map(|r| r.row).collect();
    let rows: Vec<u32> = (piece.first_row..last).filter(|r| !refused.contains(r) && !piece.blank.contains(r)).collect();
    let rows_known = rows.len() == parsed.events.len();
    if !rows_known {
        tracing::warn!(
            events = parsed.events.len(),
            rows = rows.len(),
            first_row = piece.first_row,
            "the adapter's events do not match the piece's rows; repeats across pieces are reported without a row"
        );
    }
    let mut events = Vec::with_capacity(parsed.events.len());
    // This piece's transactions, searched beside the earlier pieces' and added to them at
    // the end (one merge per piece).
    let mut here: HashMap<[u32; 3], u32> = HashMap::with_capacity(parsed.events.len());
    for (k, event) in parsed.events.into_iter().enumerate() {
        let row = if rows_known { Some(rows[k]) } else { None };
        let key = digest(&event.transaction_id);
        if let Some(first) = seen.row_of(key).or_else(|| here.get(&key).copied()) {
            let reason = match first {
                0 => format!("transaction {:?} is already in the file (one row per transaction)", event.transaction_id),
                n => format!("transaction {:?} is already on row {n} (one row per transaction)", event.transaction_id),
            };
            rejected.push(RowOutcome { row, reason });
            continue;
        }
        here.insert(key, row.unwrap_or(0));
        events.push(event);
    }
    seen.add(here);
    // In row order, as the adapter lists a whole file's.
    rejected.sort_by_key(|r| r.row.unwrap_or(u32::MAX));
    (events, rejected)
}

/// 96 bits of a transaction id's SHA-256: two different ids share it with a chance of
/// about 10^-17 in a million-row file, so a repeat is never a false alarm in practice.
fn digest(transaction_id: &str) -> [u32; 3] {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(transaction_id.as_bytes());
    let word = |i: usize| u32::from_le_bytes([hash[4 * i], hash[4 * i + 1], hash[4 * i + 2], hash[4 * i + 3]]);
    [word(0), word(1), word(2)]
}

/// The transactions of a file's earlier pieces, each with the row it came from: one
/// sorted array of (digest, row), 16 bytes a row (a million rows: 16 MB), reserved at
/// the start, searched by bisection. A hash table of 128-bit digests took 69 MB for a
/// million rows (a slot of 32 bytes and a control byte, at a load of one half to seven
/// eighths), and growing it held the old and the new table at once.
#[derive(Debug, Default)]
struct Seen {
    /// `[digest.., row]`, sorted by digest (the row never decides: digests are distinct).
    entries: Vec<[u32; 4]>,
}

impl Seen {
    fn with_capacity(rows: usize) -> Seen {
        Seen { entries: Vec::with_capacity(rows) }
    }

    /// The row a transaction came from (0: unknown), if an earlier piece had it.
    fn row_of(&self, key: [u32; 3]) -> Option<u32> {
        let at = self.entries.binary_search_by(|e| e[..3].cmp(&key[..])).ok()?;
        Some(self.entries[at][3])
    }

    /// Adds a piece's transactions (none of them already here). They are sorted, then
    /// merged in from the back, in place: no second array, and a piece costs one pass
    /// over the entries (a million-row file's 500 pieces move about 4 GB in all, seconds
    /// beside the minutes its rows take to record).
    fn add(&mut self, piece: HashMap<[u32; 3], u32>) {
        let mut new: Vec<[u32; 4]> = piece.into_iter().map(|(k, row)| [k[0], k[1], k[2], row]).collect();
        new.sort_unstable();
        let old = self.entries.len();
        self.entries.resize(old + new.len(), [0; 4]);
        let (mut i, mut j) = (old, new.len());
        for at in (0..self.entries.len()).rev() {
            // Take the larger of the two tails' last entries; once `new` is empty the
            // rest of `entries` is already in place.
            if j == 0 {
                break;
            }
            if i > 0 && self.entries[i - 1][..3] > new[j - 1][..3] {
                self.entries[at] = self.entries[i - 1];
                i -= 1;
            } else {
                self.entries[at] = new[j - 1];
                j -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{HashMap, Seen, digest};

    #[test]
    fn seen_finds_every_earlier_transaction_with_its_row_and_nothing_else() {
        let mut seen = Seen::with_capacity(0);
        // Pieces of 7 rows, 50 pieces: every id once, with its row.
        for piece in 0..50u32 {
            let rows: HashMap<[u32; 3], u32> =
                (0..7).map(|k| piece * 7 + k).map(|n| (digest(&format!("T{n}")), n + 2)).collect();
            seen.add(rows);
        }
        for n in 0..350u32 {
            assert_eq!(seen.row_of(digest(&format!("T{n}"))), Some(n + 2), "T{n}");
        }
        assert_eq!(seen.row_of(digest("T350")), None);
        assert!(seen.entries.windows(2).all(|w| w[0][..3] < w[1][..3]), "sorted");
    }
}
