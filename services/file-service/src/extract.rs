//! Text extraction from `.txt`, `.docx` and `.pdf` files, and content validation.

use std::io::{Cursor, Read};

/// The contract's validation error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Nothing but whitespace.
    EmptyContent,
    /// Under the minimum length.
    ContentTooShort,
    /// Over the maximum length.
    ContentTooLong,
    /// The raw bytes could not be read back.
    RawStorageFailed,
    /// The file type is not supported, its bytes contradict its extension, or it is unreadable.
    TextExtractionFailed,
    /// An encrypted PDF.
    EncryptedFileUnsupported,
    /// Anything else (for example the text store kept failing).
    UnknownValidationError,
}

impl ErrorCode {
    /// The code as consumers read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EmptyContent => "EMPTY_CONTENT",
            Self::ContentTooShort => "CONTENT_TOO_SHORT",
            Self::ContentTooLong => "CONTENT_TOO_LONG",
            Self::RawStorageFailed => "RAW_STORAGE_FAILED",
            Self::TextExtractionFailed => "TEXT_EXTRACTION_FAILED",
            Self::EncryptedFileUnsupported => "ENCRYPTED_FILE_UNSUPPORTED",
            Self::UnknownValidationError => "UNKNOWN_VALIDATION_ERROR",
        }
    }
}

/// Why a file was refused: its code, a message for people, the step, and particulars.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The contract's code.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
    /// `extract_text` or `validate_content`.
    pub operation: &'static str,
    /// Machine-readable particulars.
    pub details: serde_json::Value,
}

impl Rejection {
    fn extraction(code: ErrorCode, message: impl Into<String>, details: serde_json::Value) -> Self {
        Self {
            code,
            message: message.into(),
            operation: "extract_text",
            details,
        }
    }
}

/// Fewest characters an essay may have (after trimming).
pub const MIN_CHARS: usize = 50;
/// Most characters an essay may have (after trimming).
pub const MAX_CHARS: usize = 50_000;

/// What the first bytes say a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Pdf,
    Zip,
    OleCompound,
    Image(&'static str),
    Unknown,
}

fn sniff(bytes: &[u8]) -> Sniffed {
    let head = &bytes[..bytes.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        Sniffed::Pdf
    } else if head.starts_with(b"PK\x03\x04") {
        Sniffed::Zip
    } else if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1]) {
        Sniffed::OleCompound
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Sniffed::Image("PNG")
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Sniffed::Image("JPEG")
    } else if head.starts_with(b"GIF8") {
        Sniffed::Image("GIF")
    } else {
        Sniffed::Unknown
    }
}

fn extension(filename: &str) -> String {
    std::path::Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

fn contradicts(extension: &str, found: &str) -> Rejection {
    Rejection::extraction(
        ErrorCode::TextExtractionFailed,
        format!("the file is named .{extension} but its bytes are {found}"),
        serde_json::json!({"extension": extension, "detected": found}),
    )
}

/// Extracts the text of `bytes`, by the extension of `filename`, after checking that the leading
/// bytes agree with it.
pub fn extract_text(filename: &str, bytes: &[u8]) -> Result<String, Rejection> {
    let extension = extension(filename);
    let sniffed = sniff(bytes);
    match extension.as_str() {
        "txt" => match sniffed {
            Sniffed::Pdf => Err(contradicts("txt", "a PDF document")),
            Sniffed::Zip => Err(contradicts("txt", "a ZIP archive")),
            Sniffed::OleCompound => Err(contradicts("txt", "an Office 97-2003 document")),
            Sniffed::Image(kind) => Err(contradicts("txt", kind)),
            Sniffed::Unknown => decode_text(bytes),
        },
        "docx" => match sniffed {
            Sniffed::Zip => docx_text(bytes),
            Sniffed::Pdf => Err(contradicts("docx", "a PDF document")),
            _ => Err(contradicts("docx", "not a ZIP-based Word document")),
        },
        "pdf" => match sniffed {
            Sniffed::Pdf => pdf_text(bytes),
            Sniffed::Zip => Err(contradicts("pdf", "a ZIP archive")),
            _ => Err(contradicts("pdf", "not a PDF document")),
        },
        other => Err(Rejection::extraction(
            ErrorCode::TextExtractionFailed,
            format!(
                "unsupported file type `{}`: send .txt, .docx or .pdf",
                if other.is_empty() { "(none)" } else { other }
            ),
            serde_json::json!({"extension": other, "supported": ["txt", "docx", "pdf"]}),
        )),
    }
}

/// Decodes a `.txt` file: UTF-8 with or without a byte-order mark, or UTF-16 (little- or
/// big-endian) with one. Anything else (invalid UTF-8, NUL bytes, unpaired UTF-16 surrogates, an
/// odd number of UTF-16 bytes) is refused with `TEXT_EXTRACTION_FAILED` and
/// `details.reason = "unsupported_encoding"`, saying where and what.
///
/// This runs in the service's process: one linear pass without recursion, at most one copy of
/// the bytes, so no file can crash it or grow it beyond twice the file's size.
pub fn decode_text(bytes: &[u8]) -> Result<String, Rejection> {
    let refuse = |encoding: &str, problem: &str, offset: usize| {
        Rejection::extraction(
            ErrorCode::TextExtractionFailed,
            format!(
                "the text file is not readable as {encoding}: {problem} at byte {offset}; save it \
                 as UTF-8 (or UTF-16 with a byte-order mark)"
            ),
            serde_json::json!({
                "extension": "txt",
                "reason": "unsupported_encoding",
                "encoding": encoding,
                "problem": problem,
                "offset": offset,
            }),
        )
    };
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return utf8_text(rest).map_err(|(problem, at)| refuse("UTF-8", problem, at + 3));
    }
    let utf16 = |rest: &[u8], encoding: &str, unit: fn([u8; 2]) -> u16| {
        if !rest.len().is_multiple_of(2) {
            return Err(refuse(encoding, "an odd number of bytes", bytes.len()));
        }
        let units = rest.chunks_exact(2).map(|pair| unit([pair[0], pair[1]]));
        let mut text = String::with_capacity(rest.len() / 2);
        for (index, decoded) in char::decode_utf16(units).enumerate() {
            match decoded {
                Ok('\0') => return Err(refuse(encoding, "a NUL character", 2 + index * 2)),
                Ok(c) => text.push(c),
                Err(_) => return Err(refuse(encoding, "an unpaired surrogate", 2 + index * 2)),
            }
        }
        Ok(text)
    };
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(rest, "UTF-16LE", u16::from_le_bytes);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(rest, "UTF-16BE", u16::from_be_bytes);
    }
    utf8_text(bytes).map_err(|(problem, at)| refuse("UTF-8", problem, at))
}

/// Valid UTF-8 without NUL characters, or the problem and its byte offset.
fn utf8_text(bytes: &[u8]) -> Result<String, (&'static str, usize)> {
    let text = std::str::from_utf8(bytes).map_err(|e| ("invalid UTF-8", e.valid_up_to()))?;
    if let Some(at) = text.find('\0') {
        return Err(("a NUL byte", at));
    }
    Ok(text.to_owned())
}

fn docx_text(bytes: &[u8]) -> Result<String, Rejection> {
    let unreadable = |why: String| {
        Rejection::extraction(
            ErrorCode::TextExtractionFailed,
            format!("the Word document cannot be read: {why}"),
            serde_json::json!({"extension": "docx"}),
        )
    };
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| unreadable(e.to_string()))?;
    let mut xml = String::new();
    archive
        .by_name("word/document.xml")
        .map_err(|_| unreadable("it has no word/document.xml".into()))?
        .take(64 * 1024 * 1024)
        .read_to_string(&mut xml)
        .map_err(|e| unreadable(e.to_string()))?;
    document_xml_text(&xml).map_err(unreadable)
}

/// The text of WordprocessingML: `w:t` runs, with paragraph ends, breaks and tabs kept.
fn document_xml_text(xml: &str) -> Result<String, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut text = String::new();
    let mut in_text = false;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) if e.local_name().as_ref() == "t" => in_text = true,
            Event::End(e) => match e.local_name().as_ref() {
                "t" => in_text = false,
                "p" => text.push('\n'),
                _ => {}
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                "br" | "cr" => text.push('\n'),
                "tab" => text.push('\t'),
                _ => {}
            },
            Event::Text(t) if in_text => text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) if in_text => {
                if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
                    text.push(c);
                    continue;
                }
                let resolved = match r.xml10_content().as_ref() {
                    "amp" => "&",
                    "lt" => "<",
                    "gt" => ">",
                    "quot" => "\"",
                    "apos" => "'",
                    _ => "",
                };
                text.push_str(resolved);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(text)
}

fn pdf_text(bytes: &[u8]) -> Result<String, Rejection> {
    let unreadable = |why: String| {
        Rejection::extraction(
            ErrorCode::TextExtractionFailed,
            format!("the PDF cannot be read: {why}"),
            serde_json::json!({"extension": "pdf"}),
        )
    };
    let document = lopdf::Document::load_mem(bytes).map_err(|e| unreadable(e.to_string()))?;
    if document.is_encrypted() || document.trailer.get(b"Encrypt").is_ok() {
        return Err(Rejection::extraction(
            ErrorCode::EncryptedFileUnsupported,
            "the PDF is encrypted; send it without a password",
            serde_json::json!({"extension": "pdf", "encrypted": true}),
        ));
    }
    // pdf-extract panics on some malformed files; a panic is an unreadable file, not a crash.
    match std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(bytes)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(unreadable(e.to_string())),
        Err(_) => Err(unreadable("the text layer could not be decoded".into())),
    }
}

/// Checks the extracted text: trimmed length in characters, 50 to 50,000 inclusive.
pub fn validate_content(text: &str) -> Result<(), Rejection> {
    let length = text.trim().chars().count();
    let reject = |code: ErrorCode, message: String| Rejection {
        code,
        message,
        operation: "validate_content",
        details: serde_json::json!({
            "length": length,
            "min_length": MIN_CHARS,
            "max_length": MAX_CHARS,
        }),
    };
    if length == 0 {
        Err(reject(
            ErrorCode::EmptyContent,
            "the file has no text".into(),
        ))
    } else if length < MIN_CHARS {
        Err(reject(
            ErrorCode::ContentTooShort,
            format!("{length} characters; at least {MIN_CHARS} are needed"),
        ))
    } else if length > MAX_CHARS {
        Err(reject(
            ErrorCode::ContentTooLong,
            format!("{length} characters; at most {MAX_CHARS} are allowed"),
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Vec<u8> {
        let root = env!("CARGO_MANIFEST_DIR");
        std::fs::read(format!("{root}/{path}")).unwrap()
    }

    #[test]
    fn txt_in_utf8_and_utf16_with_a_bom_is_read() {
        let essay = "Café ☕ and 𝄞 music: an essay.\nSecond line.";
        assert_eq!(extract_text("a.txt", essay.as_bytes()).unwrap(), essay);
        let bom = [&[0xEF, 0xBB, 0xBF][..], essay.as_bytes()].concat();
        assert_eq!(extract_text("a.TXT", &bom).unwrap(), essay);
        let units: Vec<u16> = essay.encode_utf16().collect();
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(units.iter().flat_map(|u| u.to_le_bytes()))
            .collect();
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain(units.iter().flat_map(|u| u.to_be_bytes()))
            .collect();
        assert_eq!(extract_text("le.txt", &le).unwrap(), essay);
        assert_eq!(extract_text("be.txt", &be).unwrap(), essay);
    }

    #[test]
    fn txt_in_any_other_encoding_is_refused_with_where_and_why() {
        let latin1 = fixture("tests/fixtures/latin1-bytes.txt");
        let utf16_without_bom: Vec<u8> = "an essay in UTF-16 without its byte-order mark"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        let cases: [(&[u8], &str, &str); 6] = [
            (&latin1, "UTF-8", "invalid UTF-8"),
            (b"ok \xff end", "UTF-8", "invalid UTF-8"),
            (&utf16_without_bom, "UTF-8", "a NUL byte"),
            (b"\xEF\xBB\xBFbom then \xc3", "UTF-8", "invalid UTF-8"),
            (b"\xFF\xFEa\x00b", "UTF-16LE", "an odd number of bytes"),
            (
                b"\xFE\xFF\xD8\x00\x00a",
                "UTF-16BE",
                "an unpaired surrogate",
            ),
        ];
        for (bytes, encoding, problem) in cases {
            let error = extract_text("essay.txt", bytes).unwrap_err();
            assert_eq!(error.code, ErrorCode::TextExtractionFailed, "{problem}");
            assert_eq!(error.operation, "extract_text");
            assert_eq!(error.details["reason"], "unsupported_encoding");
            assert_eq!(error.details["encoding"], encoding, "{bytes:?}");
            assert_eq!(error.details["problem"], problem, "{bytes:?}");
            assert!(error.message.contains(problem), "{}", error.message);
        }
        assert_eq!(
            extract_text("a.txt", b"ab\xffcd").unwrap_err().details["offset"],
            2
        );
    }

    #[test]
    fn docx_paragraphs_become_lines() {
        let text = extract_text("sleep.docx", &fixture("samples/sleep.docx")).unwrap();
        assert!(text.starts_with("Why Sleep Matters\n"));
        assert!(text.contains("Teenagers need more sleep"));
        assert_eq!(text.lines().count(), 3);
        assert_eq!(
            document_xml_text(
                "<w:document xmlns:w=\"w\"><w:body><w:p><w:r><w:t>a &amp; b</w:t><w:tab/><w:t>c</w:t><w:br/></w:r></w:p></w:body></w:document>"
            )
            .unwrap(),
            "a & b\tc\n\n"
        );
    }

    #[test]
    fn pdf_text_is_extracted() {
        let text = extract_text("climate.pdf", &fixture("samples/climate.pdf")).unwrap();
        assert!(text.contains("Climate and Cities"), "{text}");
        assert!(text.contains("public transport"), "{text}");
        validate_content(&text).unwrap();
    }

    #[test]
    fn an_encrypted_pdf_is_refused_as_such() {
        let error =
            extract_text("secret.pdf", &fixture("tests/fixtures/encrypted.pdf")).unwrap_err();
        assert_eq!(error.code, ErrorCode::EncryptedFileUnsupported);
    }

    #[test]
    fn bytes_that_contradict_the_extension_are_refused() {
        let cases = [
            ("tests/fixtures/not-really.pdf", "essay.pdf"),
            ("tests/fixtures/pdf-named.txt", "essay.txt"),
            ("tests/fixtures/zip-not-docx.docx", "essay.docx"),
            ("samples/reading.txt", "essay.docx"),
            ("samples/drawing.png", "essay.txt"),
            ("samples/climate.pdf", "essay.docx"),
            ("samples/sleep.docx", "essay.pdf"),
        ];
        for (path, name) in cases {
            let error = extract_text(name, &fixture(path)).unwrap_err();
            assert_eq!(
                error.code,
                ErrorCode::TextExtractionFailed,
                "{path} as {name}"
            );
            assert_eq!(error.operation, "extract_text");
        }
        assert!(extract_text("essay.pdf", b"%PDF-1.4 garbage").is_err());
    }

    #[test]
    fn unsupported_types_are_refused() {
        for name in ["drawing.png", "essay.rtf", "essay", "essay.doc"] {
            let error = extract_text(name, b"some words").unwrap_err();
            assert_eq!(error.code, ErrorCode::TextExtractionFailed, "{name}");
            assert!(error.message.contains("unsupported"), "{}", error.message);
        }
    }

    #[test]
    fn validation_counts_trimmed_characters_with_inclusive_bounds() {
        let text = |n: usize| format!("  {}\n", "é".repeat(n));
        assert_eq!(
            validate_content(" \n\t ").unwrap_err().code,
            ErrorCode::EmptyContent
        );
        assert_eq!(
            validate_content(&text(49)).unwrap_err().code,
            ErrorCode::ContentTooShort
        );
        assert!(validate_content(&text(50)).is_ok());
        assert!(validate_content(&text(50_000)).is_ok());
        assert_eq!(
            validate_content(&text(50_001)).unwrap_err().code,
            ErrorCode::ContentTooLong
        );
        let short = validate_content("short").unwrap_err();
        assert_eq!(short.operation, "validate_content");
        assert_eq!(short.details["length"], 5);
    }

    #[test]
    fn codes_are_the_contracts() {
        let all = [
            (ErrorCode::EmptyContent, "EMPTY_CONTENT"),
            (ErrorCode::ContentTooShort, "CONTENT_TOO_SHORT"),
            (ErrorCode::ContentTooLong, "CONTENT_TOO_LONG"),
            (ErrorCode::RawStorageFailed, "RAW_STORAGE_FAILED"),
            (ErrorCode::TextExtractionFailed, "TEXT_EXTRACTION_FAILED"),
            (
                ErrorCode::EncryptedFileUnsupported,
                "ENCRYPTED_FILE_UNSUPPORTED",
            ),
            (
                ErrorCode::UnknownValidationError,
                "UNKNOWN_VALIDATION_ERROR",
            ),
        ];
        for (code, text) in all {
            assert_eq!(code.as_str(), text);
        }
    }
}
