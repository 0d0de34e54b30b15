//! `qwen2 run` (one prompt through the chat template) and `qwen2 chat` (interactive).

use std::io::IsTerminal;

use qwen2_burn::core::chat::{ChatOptions, ChatSession, ChatTurn};
use qwen2_burn::core::fallback::is_nonfinite;
use qwen2_burn::core::generate::GenerateOptions;
use qwen2_burn::core::text::{ChatTemplate, Message, TextTokenizer};
use qwen2_burn::core::Platform;

use crate::args::{ChatArgs, RunArgs, SamplingArgs};
use crate::chat_input::{ChatInput, Read};
use crate::model_setup::{
    fallback_json, load, loader, plan_note, prefill_progress, print_flush, rate_text,
    report_fallbacks, CliResult,
};
use crate::options::{chat_end_ids, generate_options, model_tokenizer};

/// Replies are capped at this many tokens unless told otherwise.
const DEFAULT_REPLY_TOKENS: usize = 512;

fn turn_stats(turn: &ChatTurn, plan: &str) -> String {
    let g = &turn.generation;
    format!(
        "{} tokens, finish reason {} ({}); prefilled {} new tokens{}, reused {} cached{}",
        g.ids.len(),
        g.finish_reason(),
        plan,
        turn.prefilled_tokens,
        rate_text(" at", g.prefill_tokens_per_s()),
        turn.reused_tokens,
        rate_text("; decode", g.decode_tokens_per_s())
    )
}

/// The model directory's tokenizer and chat template, and the settings of every reply.
fn chat_setup(
    dir: &std::path::Path,
    sampling: &SamplingArgs,
    command: &str,
) -> CliResult<(TextTokenizer, ChatTemplate, ChatOptions)> {
    let tokenizer = model_tokenizer(dir, command)?;
    let template = ChatTemplate::from_model_dir(dir)?;
    let opts = ChatOptions {
        generate: GenerateOptions {
            prefill_progress: prefill_progress(),
            ..generate_options(
                sampling,
                dir,
                &chat_end_ids(&tokenizer),
                DEFAULT_REPLY_TOKENS,
            )?
        },
        stop_strings: sampling.stop.clone(),
        template_vars: Default::default(),
        cancel: None,
    };
    Ok((tokenizer, template, opts))
}

pub fn run_cmd<P: Platform>(a: RunArgs) -> CliResult {
    let prompt = crate::options::prompt_text(&a.prompt)?
        .ok_or("give the message as --prompt, --prompt-file, a positional argument or on stdin")?;
    let loader = loader::<P>(&a.model)?;
    let (tokenizer, template, opts) = chat_setup(&a.model.model, &a.sampling, "qwen2 run")?;
    // Stream only when no fallback can restart the reply halfway.
    let stream = !a.json && !loader.may_restart();
    let mut weights = String::new();
    let outcome = loader.run(|policy| {
        let model = load(&loader, policy)?;
        weights = model.weight_storage_text();
        let mut session = ChatSession::new(&model, &tokenizer, &template, a.system.as_deref());
        session.send(&prompt, &opts, |text| {
            if stream {
                print_flush(text);
            }
        })
    })?;
    report_fallbacks(&outcome);
    let turn = &outcome.value;
    let g = &turn.generation;
    if a.json {
        let json = serde_json::json!({
            "text": turn.reply,
            "ids": g.ids,
            "prompt_tokens": g.prompt_tokens,
            "generated_tokens": g.ids.len(),
            "stopped_on_eos": g.stopped_on_eos,
            "stopped_on_stop_string": g.stopped_by_caller,
            "finish_reason": g.finish_reason(),
            "seed": opts.generate.sampling.seed,
            "prefill_seconds": g.prefill_time.as_secs_f64(),
            "prefill_tokens_per_s": g.prefill_tokens_per_s(),
            "decode_seconds": g.decode_time.as_secs_f64(),
            "decode_tokens_per_s": g.decode_tokens_per_s(),
            "backend": P::NAME,
            "precision": outcome.policy.name(),
            "weights": weights,
            "requested_precision": a.model.precision,
            "fallbacks": fallback_json(&outcome),
        });
        println!("{json}");
    } else {
        if !stream {
            print!("{}", turn.reply);
        }
        println!();
        eprintln!(
            "[{}]",
            turn_stats(turn, &plan_note(&loader, outcome.policy))
        );
    }
    if let Some(n) = a.sampling.max_new_tokens.filter(|&n| n > g.ids.len()) {
        if g.finish_reason() == "length" {
            eprintln!(
                "warning: --max-new-tokens {n} capped: the reply stopped after {} tokens at the \
                 context limit",
                g.ids.len()
            );
        }
    }
    Ok(())
}

/// The flag Ctrl-C sets while a reply is being generated (the line editor reads Ctrl-C at
/// the prompt itself).
static CANCEL: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::OnceLock::new();

extern "C" fn on_sigint(_: libc::c_int) {
    if let Some(c) = CANCEL.get() {
        c.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Makes Ctrl-C during a reply stop the reply instead of the process.
fn install_cancel(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let _ = CANCEL.set(flag);
    // SAFETY: the handler only loads a OnceLock and stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// The chat commands, listed by the banner and `/help`.
const CHAT_HELP: &str =
    "/help: this list\n/reset: forget the conversation (the system message stays)\n\
                         /exit, /quit, /bye: quit (or Ctrl-D)";

/// Why a chat loop ended.
enum ChatEnd {
    /// The user left (Ctrl-D or /exit); `failed_turns` piped turns ended in an error.
    Quit { failed_turns: usize },
    /// A turn went non-finite: the conversation before it and the message that failed.
    NonFinite {
        error: qwen2_burn::core::Error,
        messages: Vec<Message>,
        pending: String,
    },
}

pub fn chat_cmd<P: Platform>(a: ChatArgs) -> CliResult {
    let loader = loader::<P>(&a.model)?;
    let (tokenizer, template, opts) = chat_setup(&a.model.model, &a.sampling, "qwen2 chat")?;
    let interactive = std::io::stdin().is_terminal();
    let mut policies = loader.chain().into_iter();
    let mut policy = policies.next().unwrap_or(loader.resolved().policy);
    let mut messages: Vec<Message> = a
        .system
        .as_deref()
        .map(|s| vec![Message::new("system", s)])
        .unwrap_or_default();
    let mut pending: Option<String> = None;
    let mut input = ChatInput::new(interactive)?;
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut opts = opts;
    if interactive {
        install_cancel(cancel.clone());
        opts.cancel = Some(cancel);
    }
    if interactive {
        eprintln!(
            "qwen2 chat: type a message and press Enter; commands: /help, /reset, /exit (/quit, /bye), Ctrl-D quits."
        );
    }
    loop {
        let model = load(&loader, policy)?;
        let mut session = ChatSession::with_messages(&model, &tokenizer, &template, messages);
        let end = chat_loop(
            &mut session,
            &mut input,
            &opts,
            &plan_note(&loader, policy),
            pending.take(),
            a.system.as_deref(),
        )?;
        match end {
            ChatEnd::Quit { failed_turns: 0 } => return Ok(()),
            ChatEnd::Quit { failed_turns } => {
                return Err(format!("{failed_turns} chat turn(s) failed (see above)").into())
            }
            ChatEnd::NonFinite {
                error,
                messages: kept,
                pending: text,
            } => match policies.next() {
                Some(next) => {
                    eprintln!(
                        "\nwarning: --precision {policy} produced non-finite values: {error}"
                    );
                    eprintln!("warning: falling back to --precision {next} and answering again");
                    policy = next;
                    messages = kept;
                    pending = Some(text);
                }
                None => return Err(error.into()),
            },
        }
    }
}

fn chat_loop<B: burn::prelude::Backend>(
    session: &mut ChatSession<'_, B>,
    input: &mut ChatInput,
    opts: &ChatOptions,
    plan: &str,
    mut pending: Option<String>,
    system: Option<&str>,
) -> CliResult<ChatEnd> {
    let interactive = matches!(input, ChatInput::Editor { .. });
    let mut failed_turns = 0;
    loop {
        let line = match pending.take() {
            Some(text) => text,
            None => match input.read()? {
                Read::End => return Ok(ChatEnd::Quit { failed_turns }),
                Read::Line(line) => line,
            },
        };
        let text = line.trim();
        match text {
            "" => continue,
            "/exit" | "/quit" | "/bye" => return Ok(ChatEnd::Quit { failed_turns }),
            "/reset" => {
                session.reset();
                eprintln!(
                    "(conversation reset{})",
                    if system.is_some() {
                        "; system message kept"
                    } else {
                        ""
                    }
                );
                continue;
            }
            "/help" => {
                eprintln!("{CHAT_HELP}");
                continue;
            }
            command if command.starts_with('/') && !command.contains(char::is_whitespace) => {
                eprintln!("error: unknown command {command} (not sent to the model)\n{CHAT_HELP}");
                if !interactive {
                    failed_turns += 1;
                }
                continue;
            }
            _ => {}
        }
        let before = session.messages().to_vec();
        if let Some(c) = &opts.cancel {
            c.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        match session.send(text, opts, print_flush) {
            Ok(turn) => {
                println!();
                if opts
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
                {
                    eprintln!("(reply interrupted with Ctrl-C; the partial reply stays in the conversation)");
                }
                eprintln!("[{}]", turn_stats(&turn, plan));
            }
            Err(error) if is_nonfinite(&error) => {
                return Ok(ChatEnd::NonFinite {
                    error,
                    messages: before,
                    pending: text.to_string(),
                });
            }
            Err(error) => {
                println!();
                eprintln!("error: {error}");
                if !interactive {
                    failed_turns += 1;
                }
            }
        }
    }
}
