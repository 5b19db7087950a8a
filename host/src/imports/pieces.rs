//! Cutting a CSV report into pieces at record boundaries, so that an adapter that declares
//! `[parse-file] split = "csv-records"` gets the header row and a bounded run of records
//! per call instead of the whole file (issue 14: a 1,000,000-row report in bounded memory).
//!
//! The boundaries are found by the `csv` crate with the adapter's delimiter, the same
//! reader settings `csv-report` uses, so a line break inside quotes never splits a record
//! and the host counts rows exactly as the adapter would over the whole file.

use std::io::{BufReader, Read, Seek, SeekFrom};

/// Records per piece: enough that per-call costs (a fresh sandbox instance, one
/// duplicate query) are spread thin, few enough that a piece's events (held twice at most:
/// one piece recorded while the next is parsed) stay a few megabytes.
pub const PIECE_ROWS: u32 = 2000;
/// Bytes per piece at most (a piece also ends at [`PIECE_ROWS`]): rows with long fields
/// must not make a piece exceed the adapter's input limit.
pub const PIECE_BYTES: u64 = 1 << 20;

/// A run of whole records of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Byte range in the file.
    pub start: u64,
    /// End of the byte range (exclusive).
    pub end: u64,
    /// The row number of its first record (the header is row 1).
    pub first_row: u32,
    /// How many records it holds.
    pub rows: u32,
    /// Rows (file numbering) whose fields are all empty after trimming: the adapter skips
    /// them without an event or a rejection, and the host must know them to tell which
    /// row each event came from.
    pub blank: Vec<u32>,
}

/// Where a file's header and pieces are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The header row's bytes end here (they start at 0, a byte-order mark included: the
    /// adapter strips it as it does for a whole file).
    pub header_end: u64,
    /// The pieces, in file order; none when the file has only a header.
    pub pieces: Vec<Piece>,
    /// Data records in the file.
    pub records: u64,
    /// Of which blank.
    pub blank: u64,
}

/// Why a file cannot be split; the whole-file path then reports it as the adapter would.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsplittable {
    /// No header row: the adapter's own message says so.
    Empty,
    /// Not UTF-8 (the adapter would refuse the whole file): the row and why.
    NotUtf8(u32, String),
    /// The file could not be read.
    Io(String),
}

/// Reads the whole file once (streaming, a buffer at a time) and plans its pieces. Memory:
/// the plan (a few numbers per piece) and one record.
pub fn plan<R: Read>(source: R, delimiter: u8, piece_bytes: u64) -> Result<Plan, Unsplittable> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 16, source));
    let mut record = csv::ByteRecord::new();
    let io = |e: csv::Error| Unsplittable::Io(e.to_string());
    if !reader.read_byte_record(&mut record).map_err(io)? {
        return Err(Unsplittable::Empty);
    }
    utf8(&record, 1)?;
    let header_end = reader.position().byte();
    let mut plan = Plan { header_end, pieces: Vec::new(), records: 0, blank: 0 };
    let mut current: Option<Piece> = None;
    let mut row: u32 = 1;
    while reader.read_byte_record(&mut record).map_err(io)? {
        row = row.saturating_add(1);
        plan.records += 1;
        let blank = utf8(&record, row)?;
        let end = reader.position().byte();
        let piece = current.get_or_insert_with(|| Piece {
            start: plan.pieces.last().map_or(header_end, |p| p.end),
            end,
            first_row: row,
            rows: 0,
            blank: Vec::new(),
        });
        piece.end = end;
        piece.rows += 1;
        if blank {
            piece.blank.push(row);
            plan.blank += 1;
        }
        if piece.rows >= PIECE_ROWS || piece.end - piece.start >= piece_bytes {
            plan.pieces.extend(current.take());
        }
    }
    plan.pieces.extend(current.take());
    Ok(plan)
}

/// Checks that a record is UTF-8, field by field (what lies between fields is ASCII), and
/// says whether it is blank.
fn utf8(record: &csv::ByteRecord, row: u32) -> Result<bool, Unsplittable> {
    let mut blank = true;
    for field in record.iter() {
        let text = std::str::from_utf8(field).map_err(|e| {
            Unsplittable::NotUtf8(row, format!("invalid byte at offset {} of a field", e.valid_up_to()))
        })?;
        blank &= text.trim().is_empty();
    }
    Ok(blank)
}

/// The bytes the adapter gets for a piece: the header row, then the piece's records.
pub fn read_piece<R: Read + Seek>(source: &mut R, plan: &Plan, piece: &Piece) -> std::io::Result<Vec<u8>> {
    let header = usize::try_from(plan.header_end).unwrap_or(usize::MAX);
    let body = usize::try_from(piece.end - piece.start).unwrap_or(usize::MAX);
    let mut bytes = vec![0u8; header + body];
    source.seek(SeekFrom::Start(0))?;
    source.read_exact(&mut bytes[..header])?;
    // The header's bytes end where the reader stopped after it: at or within its line
    // break; the rest of a break begins the piece, and the adapter's reader skips it.
    source.seek(SeekFrom::Start(piece.start))?;
    source.read_exact(&mut bytes[header..])?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Every record the csv reader finds in `bytes` (header excluded), as strings.
    fn records(bytes: &[u8]) -> Vec<Vec<String>> {
        let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(bytes);
        reader.records().map(|r| r.expect("record").iter().map(str::to_string).collect()).collect()
    }

    fn pieces_of(file: &str, piece_bytes: u64) -> (Plan, Vec<Vec<u8>>) {
        let plan = plan(file.as_bytes(), b',', piece_bytes).expect("plan");
        let mut cursor = Cursor::new(file.as_bytes().to_vec());
        let bytes = plan.pieces.iter().map(|p| read_piece(&mut cursor, &plan, p).expect("read")).collect();
        (plan, bytes)
    }

    #[test]
    fn pieces_hold_whole_records_and_together_the_whole_file() {
        // Quoted line breaks, CRLF, a blank row and no final line break: the records of
        // all pieces together are the file's, in order, each piece led by the header.
        let mut file = String::from("\u{feff}id,note\r\n");
        for i in 0..5000 {
            match i % 7 {
                0 => file.push_str(&format!("t{i},\"two\nlines, and a comma\"\r\n")),
                1 => file.push_str(",\r\n"),
                _ => file.push_str(&format!("t{i},plain\n")),
            }
        }
        file.push_str("last,\"no \"\"final\"\" break\"");
        let whole = records(file.as_bytes());
        for piece_bytes in [1 << 20, 4096, 1] {
            let (plan, pieces) = pieces_of(&file, piece_bytes);
            assert_eq!(plan.records, 5001);
            assert!(pieces.len() >= 3, "{piece_bytes}: several pieces");
            let mut joined = Vec::new();
            let mut next_row = 2;
            for (piece, bytes) in plan.pieces.iter().zip(&pieces) {
                assert!(bytes.starts_with("\u{feff}id,note".as_bytes()));
                let got = records(bytes);
                assert_eq!(got.len() as u32, piece.rows);
                assert_eq!(piece.first_row, next_row, "rows are numbered through the pieces");
                next_row += piece.rows;
                for (i, r) in got.iter().enumerate() {
                    let row = piece.first_row + i as u32;
                    assert_eq!(piece.blank.contains(&row), r.iter().all(|v| v.trim().is_empty()), "row {row}");
                }
                joined.extend(got);
            }
            assert_eq!(joined, whole, "{piece_bytes}");
            assert_eq!(plan.blank, 5000 / 7 + 1);
        }
    }

    #[test]
    fn a_header_only_file_has_no_pieces_and_an_empty_one_cannot_be_split() {
        let plan = plan("a,b\n".as_bytes(), b',', PIECE_BYTES).expect("plan");
        assert_eq!((plan.pieces.len(), plan.records, plan.header_end), (0, 0, 4));
        assert_eq!(super::plan("".as_bytes(), b',', PIECE_BYTES), Err(Unsplittable::Empty));
    }

    #[test]
    fn bytes_that_are_not_utf8_name_their_row() {
        let file = b"a,b\nx,y\nx,\xff\n";
        assert!(matches!(plan(&file[..], b',', PIECE_BYTES), Err(Unsplittable::NotUtf8(3, _))));
    }

    #[test]
    fn the_delimiter_decides_where_quotes_open() {
        // With ';' the quote opens a field and the line break is inside it: one record.
        let file = "a;b\nx;\"1\n2\"\n";
        assert_eq!(plan(file.as_bytes(), b';', PIECE_BYTES).expect("plan").records, 1);
    }
}
