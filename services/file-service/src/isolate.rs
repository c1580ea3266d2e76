//! Text extraction of untrusted formats (`.docx`, `.pdf`) in a child process.
//!
//! A parser fed a hostile file can overflow its stack (a Form XObject that draws itself), which
//! aborts the whole process, or allocate gigabytes before any check runs (a stream deflated
//! twice). Neither can be caught inside a process, so the service runs these parsers in a child:
//! the same binary with the hidden subcommand [`SUBCOMMAND`], the file on stdin, one JSON line
//! with the text (or the reason it was refused) on stdout. The child limits itself before it
//! reads a byte: address space (`RLIMIT_AS`), CPU seconds (`RLIMIT_CPU`), no core dumps, and
//! death with its parent. The parent kills it when the wall-clock limit passes. At most one child
//! runs per processing slot, so never more than the processing concurrency at once.
//!
//! A child that crashes, runs out of memory or CPU, or is killed on timeout gives the upload
//! `TEXT_EXTRACTION_FAILED` with `details.reason` = `crashed`, `memory_limit`, `cpu_limit`,
//! `killed`, `timeout` or `bad_output`.
//!
//! `.txt` stays in the service's process: [`crate::extract::decode_text`] is one linear pass with
//! at most one copy of the bytes, so no file can make it crash or grow.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::extract::{ErrorCode, Rejection, extract_text, validate_content};

/// The hidden subcommand that runs one extraction in a child process.
pub const SUBCOMMAND: &str = "extract-text";

/// Largest answer read from a child: the longest valid essay (50,000 characters of up to four
/// bytes, JSON-escaped) fits many times over; a longer answer is `bad_output`.
const MAX_OUTPUT_BYTES: u64 = 4 * 1024 * 1024;
/// How much of a child's stderr is kept for the log and the failure's reason.
const MAX_STDERR_BYTES: usize = 16 * 1024;

/// The limits every extraction child runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Wall-clock time before the child is killed.
    pub timeout: Duration,
    /// Address space (`RLIMIT_AS`) in bytes.
    pub memory_bytes: u64,
    /// CPU time (`RLIMIT_CPU`) in whole seconds.
    pub cpu_seconds: u64,
}

impl Default for ExtractLimits {
    /// 30 s wall clock, 512 MiB of address space, 20 CPU seconds.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            memory_bytes: 512 * 1024 * 1024,
            cpu_seconds: 20,
        }
    }
}

/// Whether a file of this name is extracted in a child process (`.docx`, `.pdf`).
pub fn needs_isolation(filename: &str) -> bool {
    let extension = std::path::Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(extension.as_deref(), Some("docx" | "pdf"))
}

/// What a child writes on stdout: one JSON line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    Text(String),
    Rejected {
        code: String,
        message: String,
        operation: String,
        details: serde_json::Value,
    },
}

fn code_from_str(code: &str) -> ErrorCode {
    match code {
        "EMPTY_CONTENT" => ErrorCode::EmptyContent,
        "CONTENT_TOO_SHORT" => ErrorCode::ContentTooShort,
        "CONTENT_TOO_LONG" => ErrorCode::ContentTooLong,
        "RAW_STORAGE_FAILED" => ErrorCode::RawStorageFailed,
        "ENCRYPTED_FILE_UNSUPPORTED" => ErrorCode::EncryptedFileUnsupported,
        "TEXT_EXTRACTION_FAILED" => ErrorCode::TextExtractionFailed,
        _ => ErrorCode::UnknownValidationError,
    }
}

fn operation_from_str(operation: &str) -> &'static str {
    match operation {
        "validate_content" => "validate_content",
        _ => "extract_text",
    }
}

/// The child's side: limits itself, reads the file from stdin, and writes one JSON line:
/// `{"text": ...}` or `{"rejected": {"code", "message", "operation", "details"}}`.
/// Called by `main` before any runtime or thread starts.
pub fn run_child(filename: &str, limits: ExtractLimits, max_input_bytes: u64) -> ExitCode {
    use nix::sys::resource::{Resource, setrlimit};
    // Limits first, before the file is read or parsed. Failing to set one is fatal: the
    // parent then reports the extraction as failed rather than running it unbounded.
    // Death with the parent: the signal comes when the *thread* that spawned the child exits.
    // The service spawns children from its runtime's worker threads, which live as long as the
    // process, so this fires when the service dies (a SIGKILL included), not before.
    let limited = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .and_then(|()| setrlimit(Resource::RLIMIT_CORE, 0, 0))
        .and_then(|()| {
            setrlimit(
                Resource::RLIMIT_AS,
                limits.memory_bytes,
                limits.memory_bytes,
            )
        })
        .and_then(|()| {
            setrlimit(
                Resource::RLIMIT_CPU,
                limits.cpu_seconds,
                limits.cpu_seconds.saturating_add(1),
            )
        });
    if let Err(e) = limited {
        eprintln!("file-service {SUBCOMMAND}: cannot set resource limits: {e}");
        return ExitCode::from(3);
    }
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin()
        .take(max_input_bytes)
        .read_to_end(&mut bytes)
    {
        eprintln!("file-service {SUBCOMMAND}: cannot read the file: {e}");
        return ExitCode::from(4);
    }
    let answer = match extract_text(filename, &bytes).and_then(|text| {
        validate_content(&text)?;
        Ok(text)
    }) {
        Ok(text) => Answer::Text(text),
        Err(rejection) => Answer::Rejected {
            code: rejection.code.as_str().to_owned(),
            message: rejection.message,
            operation: rejection.operation.to_owned(),
            details: rejection.details,
        },
    };
    let mut stdout = std::io::stdout().lock();
    let written = serde_json::to_writer(&mut stdout, &answer)
        .map_err(std::io::Error::from)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("file-service {SUBCOMMAND}: cannot write the answer: {e}");
            ExitCode::from(5)
        }
    }
}

/// Why a child gave no answer.
fn failed(reason: &'static str, message: String, extra: serde_json::Value) -> Rejection {
    let mut details = serde_json::json!({"reason": reason, "isolated": true});
    if let (Some(details), serde_json::Value::Object(extra)) = (details.as_object_mut(), extra) {
        details.extend(extra);
    }
    Rejection {
        code: ErrorCode::TextExtractionFailed,
        message,
        operation: "extract_text",
        details,
    }
}

/// Extracts and validates the text of `bytes` in a child process running `program` (the
/// service's own binary) under `limits`. Every way the child can fail is a [`Rejection`] with
/// `TEXT_EXTRACTION_FAILED`; only a child that could not be started at all is an `Err` of the
/// outer result (the upload is then retried).
pub async fn extract_in_child(
    program: &std::path::Path,
    filename: &str,
    bytes: &[u8],
    limits: ExtractLimits,
) -> Result<Result<String, Rejection>, std::io::Error> {
    let mut child = tokio::process::Command::new(program)
        .arg(SUBCOMMAND)
        .arg("--memory-bytes")
        .arg(limits.memory_bytes.to_string())
        .arg("--cpu-seconds")
        .arg(limits.cpu_seconds.to_string())
        .arg("--max-input-bytes")
        .arg(bytes.len().to_string())
        .arg("--")
        .arg(filename)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(std::io::Error::other("the child's pipes were not opened"));
    };
    let feed = async move {
        // A child that dies early closes its stdin: that is its exit status's story, not ours.
        let _ = stdin.write_all(bytes).await;
        drop(stdin);
    };
    let answer = async move {
        let mut out = Vec::new();
        let _ = stdout
            .take(MAX_OUTPUT_BYTES + 1)
            .read_to_end(&mut out)
            .await;
        out
    };
    let errors = async move {
        let mut err = Vec::new();
        let _ = stderr
            .take(MAX_STDERR_BYTES as u64)
            .read_to_end(&mut err)
            .await;
        err
    };
    let run = async {
        let ((), out, err) = tokio::join!(feed, answer, errors);
        let status = child.wait().await;
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(limits.timeout, run).await {
        Ok(done) => done,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Ok(Err(failed(
                "timeout",
                format!(
                    "text extraction was stopped after the {} ms time limit",
                    limits.timeout.as_millis()
                ),
                serde_json::json!({"limit_ms": limits.timeout.as_millis() as u64}),
            )));
        }
    };
    let status = status?;
    let stderr = String::from_utf8_lossy(&err);
    if !stderr.trim().is_empty() {
        tracing::warn!(
            filename,
            status = %status,
            stderr = %stderr.trim(),
            "text extraction child wrote to stderr"
        );
    }
    if let Some(signal) = status.signal() {
        return Ok(Err(signalled(signal, &stderr, limits)));
    }
    if !status.success() {
        return Ok(Err(failed(
            "crashed",
            format!("text extraction failed ({status})"),
            serde_json::json!({"exit_code": status.code()}),
        )));
    }
    if out.len() as u64 > MAX_OUTPUT_BYTES {
        return Ok(Err(failed(
            "bad_output",
            "text extraction answered more than it may".into(),
            serde_json::json!({"limit_bytes": MAX_OUTPUT_BYTES}),
        )));
    }
    let line = out
        .split(|b| *b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap_or_default();
    Ok(match serde_json::from_slice::<Answer>(line) {
        Ok(Answer::Text(text)) => Ok(text),
        Ok(Answer::Rejected {
            code,
            message,
            operation,
            details,
        }) => Err(Rejection {
            code: code_from_str(&code),
            message,
            operation: operation_from_str(&operation),
            details,
        }),
        Err(e) => Err(failed(
            "bad_output",
            format!("text extraction answered something unreadable: {e}"),
            serde_json::json!({}),
        )),
    })
}

/// A child killed by a signal: which limit, or a crash.
fn signalled(signal: i32, stderr: &str, limits: ExtractLimits) -> Rejection {
    let name = nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| signal.to_string());
    let extra = serde_json::json!({"signal": name});
    if signal == nix::libc::SIGXCPU {
        failed(
            "cpu_limit",
            format!(
                "text extraction used up its {} CPU seconds",
                limits.cpu_seconds
            ),
            extra,
        )
    } else if signal == nix::libc::SIGKILL {
        failed(
            "killed",
            "text extraction was killed (its hard CPU limit, or the system ran out of memory)"
                .into(),
            extra,
        )
    } else if stderr.contains("memory allocation") && stderr.contains("failed") {
        failed(
            "memory_limit",
            format!(
                "text extraction ran out of its {} MiB of memory",
                limits.memory_bytes / (1024 * 1024)
            ),
            extra,
        )
    } else if stderr.contains("overflowed its stack") {
        failed(
            "crashed",
            "text extraction crashed: the file nests too deeply (stack overflow)".into(),
            extra,
        )
    } else {
        failed(
            "crashed",
            format!("text extraction crashed ({name})"),
            extra,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_docx_and_pdf_are_isolated() {
        for name in ["a.pdf", "a.PDF", "b.docx", "x.y.Docx"] {
            assert!(needs_isolation(name), "{name}");
        }
        for name in ["a.txt", "a.doc", "a", "pdf", "a.pdf.txt"] {
            assert!(!needs_isolation(name), "{name}");
        }
    }

    #[test]
    fn a_signal_names_its_limit() {
        let limits = ExtractLimits::default();
        let reason = |signal, stderr| signalled(signal, stderr, limits).details["reason"].clone();
        assert_eq!(reason(nix::libc::SIGXCPU, ""), "cpu_limit");
        assert_eq!(
            reason(
                nix::libc::SIGABRT,
                "memory allocation of 1073741824 bytes failed\n"
            ),
            "memory_limit"
        );
        assert_eq!(
            reason(
                nix::libc::SIGABRT,
                "thread 'main' has overflowed its stack\n"
            ),
            "crashed"
        );
        assert_eq!(reason(nix::libc::SIGSEGV, ""), "crashed");
        let rejection = signalled(nix::libc::SIGSEGV, "", limits);
        assert_eq!(rejection.code, ErrorCode::TextExtractionFailed);
        assert_eq!(rejection.details["signal"], "SIGSEGV");
    }
}
