//! What isolating text extraction costs per file: p50 of extracting (and validating) a ~20 KB
//! `.txt`, `.docx` and `.pdf` in the service's process (before issue 11) and in a child process
//! under resource limits (after), with the ratio of the two. Both are measured in the same run.
//!
//! `cargo bench -p file-service --bench extraction` (release build). `--iterations N` (default
//! 200) sets the samples per case.

use std::io::Write;
use std::time::{Duration, Instant};

use file_service::extract::{extract_text, validate_content};
use file_service::isolate::{ExtractLimits, extract_in_child, needs_isolation};

/// Deterministic pseudo-random words of 2 to 9 letters, `chars` long: about as compressible
/// as prose, so a 20 KB `.docx` holds a valid essay.
fn essay(chars: usize) -> String {
    let mut state: u32 = 0x1234_5678;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let mut text = String::with_capacity(chars + 16);
    while text.len() < chars {
        for _ in 0..2 + next() % 8 {
            text.push(char::from(b'a' + (next() % 26) as u8));
        }
        text.push(if next() % 12 == 0 { '\n' } else { ' ' });
    }
    text.truncate(chars);
    text
}

fn txt(size: usize) -> Vec<u8> {
    essay(size).into_bytes()
}

fn docx(size: usize) -> Vec<u8> {
    // Grow the text until the compressed document reaches `size` bytes.
    let mut chars = size;
    loop {
        let mut xml = String::from("<?xml version=\"1.0\"?><w:document xmlns:w=\"w\"><w:body>");
        for line in essay(chars).lines() {
            xml.push_str("<w:p><w:r><w:t>");
            xml.push_str(line);
            xml.push_str("</w:t></w:r></w:p>");
        }
        xml.push_str("</w:body></w:document>");
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("[Content_Types].xml", options).unwrap();
        zip.write_all(b"<?xml version=\"1.0\"?><Types/>").unwrap();
        zip.start_file("word/document.xml", options).unwrap();
        zip.write_all(xml.as_bytes()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        if bytes.len() >= size || chars > 45_000 {
            return bytes;
        }
        chars += chars / 4;
    }
}

fn pdf(size: usize) -> Vec<u8> {
    let mut content = String::from("BT /F1 10 Tf 14 TL 50 800 Td\n");
    for line in essay(size * 3 / 4).lines() {
        let escaped = line
            .replace('\\', "\\\\")
            .replace('(', "\\(")
            .replace(')', "\\)");
        content.push_str(&format!("({escaped}) Tj T*\n"));
    }
    content.push_str("ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] \
         /Resources << /Font << /F1 5 0 R >> >> /Contents 4 0 R >>"
            .to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len()
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = b"%PDF-1.7\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{body}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for offset in offsets {
        out.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut iterations = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--iterations" {
            iterations = args.next().and_then(|v| v.parse().ok()).unwrap_or(200);
        }
    }
    let program = std::path::PathBuf::from(env!("CARGO_BIN_EXE_file-service"));
    let limits = ExtractLimits::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let size = 20 * 1024;
    let cases = [
        ("essay.txt", txt(size)),
        ("essay.docx", docx(size)),
        ("essay.pdf", pdf(size)),
    ];
    println!(
        "text extraction per file, p50 of {iterations} (in-process = before issue 11, child = after)"
    );
    println!(
        "{:<12} {:>8} {:>8} {:>14} {:>14} {:>8}  served by",
        "file", "bytes", "chars", "in-process", "child", "ratio"
    );
    for (name, bytes) in &cases {
        let text = extract_text(name, bytes).unwrap();
        let valid = validate_content(&text).is_ok();
        let mut before = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let text = extract_text(name, bytes).unwrap();
            let _ = validate_content(&text);
            before.push(started.elapsed());
        }
        let mut after = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            let answer = runtime
                .block_on(extract_in_child(&program, name, bytes, limits))
                .unwrap();
            after.push(started.elapsed());
            assert_eq!(answer.is_ok(), valid, "{name}: {answer:?}");
        }
        let (before, after) = (p50(before), p50(after));
        println!(
            "{:<12} {:>8} {:>8} {:>11.3} ms {:>11.3} ms {:>7.1}x  {}",
            name,
            bytes.len(),
            text.chars().count(),
            before.as_secs_f64() * 1e3,
            after.as_secs_f64() * 1e3,
            after.as_secs_f64() / before.as_secs_f64(),
            if needs_isolation(name) {
                "child process"
            } else {
                "in-process (child shown for comparison)"
            }
        );
    }
}
