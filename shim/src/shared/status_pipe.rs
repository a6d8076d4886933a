//! The pipes between the shim and an instance process. The instance reports
//! on the status pipe (`log ...` lines, a `pid N` when it went on as process
//! N in its PID namespace, then `ok` or `error ...`), then waits on the
//! start pipe: one byte runs the guest, end-of-file means the task was
//! deleted before it started. After `ok` the status pipe stays open until
//! the instance exits, which says `oom` first if the guest ran out of its
//! memory limit.

/// Descriptor of the status pipe's write end in the instance process.
pub const STATUS_FD: i32 = 3;
/// Descriptor of the start pipe's read end in the instance process.
pub const START_FD: i32 = 4;

/// What the instance reported once its status pipe closed or said `ok`.
#[derive(Debug, PartialEq, Eq)]
pub struct Report {
    pub logs: Vec<String>,
    /// The pid (in the daemon's namespace) the instance went on as.
    pub pid: Option<u32>,
    pub result: Result<(), String>,
}

/// The error of a report that ended without `ok` or `error`.
pub const ENDED_SILENTLY: &str = "the instance process exited during setup without a report";

/// The late message that tells an exit was for lack of memory.
pub const OUT_OF_MEMORY: &str = "oom";

/// Whether the setup report in `stream` is whole: `ok` ends it; an error
/// runs to end-of-file.
pub fn is_complete(stream: &str) -> bool {
    stream.lines().any(|l| l == "ok") && stream.ends_with('\n')
}

/// Parses the setup report. A stream that ends without `ok` or `error`
/// means the instance died during setup.
pub fn parse(stream: &str) -> Report {
    let mut logs = Vec::new();
    let mut pid = None;
    let mut lines = stream.split_inclusive('\n');
    while let Some(line) = lines.next() {
        if let Some(msg) = line.strip_prefix("log ") {
            logs.push(msg.trim_end().to_string());
        } else if let Some(number) = line.strip_prefix("pid ") {
            pid = number.trim_end().parse().ok();
        } else if line.trim_end() == "ok" {
            return Report { logs, pid, result: Ok(()) };
        } else if let Some(first) = line.strip_prefix("error ") {
            // The error is the rest of the stream, newlines included.
            let rest: String = lines.collect();
            return Report { logs, pid, result: Err(format!("{first}{rest}").trim_end().to_string()) };
        }
    }
    Report { logs, pid, result: Err(ENDED_SILENTLY.into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ok_after_logs_and_a_pid() {
        let report = parse("pid 4321\nlog cache hit\nok\n");
        assert_eq!(report, Report { logs: vec!["cache hit".into()], pid: Some(4321), result: Ok(()) });
    }

    #[test]
    fn error_keeps_every_line() {
        let report = parse("error invalid wasm\n  caused by: x\n");
        assert_eq!(report.result, Err("invalid wasm\n  caused by: x".into()));
    }

    #[test]
    fn report_is_complete_at_ok() {
        assert!(!is_complete("log a\n"));
        assert!(!is_complete("log a\no"));
        assert!(is_complete("log a\nok\n"));
    }

    #[test]
    fn silence_is_an_error() {
        assert!(parse("log a\n").result.unwrap_err().contains("exited during setup"));
    }
}
