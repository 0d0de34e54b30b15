//! Where `qwen2 chat` reads messages from: a line editor with history and multi-line input on a
//! terminal, plain lines from a pipe.

use std::io::BufRead;
use std::path::PathBuf;

use rustyline::error::ReadlineError;
use rustyline::{Cmd, DefaultEditor, KeyCode, KeyEvent, Modifiers};

use crate::model_setup::CliResult;

/// One read from the user.
pub enum Read {
    /// A message or a /command.
    Line(String),
    /// Ctrl-D, Ctrl-C at the prompt, or the end of the piped input.
    End,
}

/// The source of messages.
pub enum ChatInput {
    /// A terminal: rustyline with history (saved in the user's data directory) and multi-line
    /// input (Alt-Enter inserts a newline; a `"""` line opens and closes a block).
    Editor {
        /// The line editor.
        editor: Box<DefaultEditor>,
        /// Where history is kept, if a data directory was found.
        history: Option<PathBuf>,
    },
    /// A pipe: one message per line.
    Lines(std::io::Lines<std::io::StdinLock<'static>>),
}

/// `$QWEN2_HISTORY`, else `$XDG_DATA_HOME/qwen2/chat_history`, else
/// `~/.local/share/qwen2/chat_history`.
fn history_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QWEN2_HISTORY") {
        return Some(PathBuf::from(p));
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("qwen2").join("chat_history"))
}

impl ChatInput {
    /// The line editor on a terminal, lines otherwise.
    pub fn new(interactive: bool) -> CliResult<Self> {
        if !interactive {
            return Ok(ChatInput::Lines(std::io::stdin().lock().lines()));
        }
        let mut editor = DefaultEditor::new().map_err(|e| format!("line editor: {e}"))?;
        editor.bind_sequence(KeyEvent(KeyCode::Enter, Modifiers::ALT), Cmd::Newline);
        let history = history_path();
        if let Some(path) = &history {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = editor.load_history(path);
        }
        Ok(ChatInput::Editor {
            editor: Box::new(editor),
            history,
        })
    }

    /// The next message (a `"""` block joined with newlines).
    pub fn read(&mut self) -> CliResult<Read> {
        match self {
            ChatInput::Lines(lines) => match lines.next() {
                None => Ok(Read::End),
                Some(line) => Ok(Read::Line(line.map_err(|e| format!("reading stdin: {e}"))?)),
            },
            ChatInput::Editor { editor, history } => {
                let mut line = match editor.readline("> ") {
                    Ok(line) => line,
                    Err(ReadlineError::Interrupted | ReadlineError::Eof) => return Ok(Read::End),
                    Err(e) => return Err(format!("reading input: {e}").into()),
                };
                if line.trim() == "\"\"\"" {
                    let mut block = Vec::new();
                    loop {
                        match editor.readline("... ") {
                            Ok(l) if l.trim() == "\"\"\"" => break,
                            Ok(l) => block.push(l),
                            Err(ReadlineError::Interrupted | ReadlineError::Eof) => {
                                return Ok(Read::End)
                            }
                            Err(e) => return Err(format!("reading input: {e}").into()),
                        }
                    }
                    line = block.join("\n");
                }
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                    if let Some(path) = history {
                        let _ = editor.save_history(path);
                    }
                }
                Ok(Read::Line(line))
            }
        }
    }
}
