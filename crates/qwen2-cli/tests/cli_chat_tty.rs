//! `qwen2 chat` on a real terminal (tmux): line editing with history, multi-line input,
//! unknown commands, Ctrl-C at the prompt. Skipped, saying so, where tmux is not installed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Waits until the pane shows `needle` `times` times (30 s at most); returns the pane. A needle
/// of ">" counts prompt lines (tmux drops the space after it).
fn wait_for(session: &str, needle: &str, times: usize) -> String {
    let start = Instant::now();
    loop {
        let pane = tmux(&["capture-pane", "-t", session, "-p", "-S", "-200"]);
        let seen = if needle == ">" {
            pane.lines().filter(|l| l.starts_with('>')).count()
        } else {
            pane.matches(needle).count()
        };
        if seen >= times {
            return pane;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "waited for {needle:?} x{times}:\n{pane}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn chat_on_a_terminal_edits_lines_keeps_history_and_quits_on_ctrl_c() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("skipped: tmux is not installed (apt-get install tmux)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-chat");
    let session = format!("qwen2-chat-test-{}", std::process::id());
    let command = format!(
        "QWEN2_HISTORY={} {} chat -m {} -n 2; echo EXITED $?; sleep 30",
        history.display(),
        env!("CARGO_BIN_EXE_qwen2"),
        model.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "150",
        "-y",
        "40",
        &command,
    ]);
    let keys = |k: &[&str]| {
        let mut args = vec!["send-keys", "-t", session.as_str()];
        args.extend(k);
        tmux(&args);
    };
    wait_for(&session, ">", 1);
    keys(&["Hi there", "Enter"]);
    wait_for(&session, "finish reason", 1);
    wait_for(&session, ">", 2);
    // Up recalls the last message; Ctrl-A goes to the line's start; no escape codes reach it.
    keys(&["Up"]);
    wait_for(&session, "> Hi there", 2);
    keys(&["C-a", "edited ", "Enter"]);
    let pane = wait_for(&session, "finish reason", 2);
    assert!(
        pane.contains("> edited Hi there") && !pane.contains("^[["),
        "{pane}"
    );
    // A """ block is one message.
    // Each line waits for its prompt: the line editor drops keys typed before it reads.
    wait_for(&session, ">", 3);
    keys(&["\"\"\"", "Enter"]);
    for (line, dots) in [("line one", 1), ("line two", 2), ("\"\"\"", 3)] {
        wait_for(&session, "...", dots);
        keys(&[line, "Enter"]);
    }
    wait_for(&session, "finish reason", 3);
    wait_for(&session, ">", 4);
    keys(&["/nope", "Enter"]);
    wait_for(&session, "unknown command /nope (not sent to the model)", 1);
    // Ctrl-C at the prompt quits cleanly.
    wait_for(&session, ">", 5);
    keys(&["C-c"]);
    let pane = wait_for(&session, "EXITED", 1);
    tmux(&["kill-session", "-t", &session]);
    assert!(pane.contains("EXITED 0"), "{pane}");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(
        saved.contains("Hi there")
            && saved.contains("edited Hi there")
            && saved.contains("line one\\nline two"),
        "{saved}"
    );
}
