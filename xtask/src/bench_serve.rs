//! `cargo xtask bench-serve`: aggregate decode throughput, time to first token and inter-token
//! latency of `qwen2 serve` (release build) at several numbers of concurrent streaming clients.
//! Each client sends `--rounds` greedy completions of a `--prompt-len`-token prompt and reads
//! `--gen` tokens (end-of-sequence ids are suppressed with `logit_bias`, so every request
//! generates exactly `--gen`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

struct Options {
    model: PathBuf,
    clients: Vec<usize>,
    prompt_len: usize,
    gen: usize,
    rounds: usize,
    precision: String,
    json: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo xtask bench-serve --model DIR [--clients 1,4,8] [--prompt-len 128] [--gen 64] [--rounds 2] [--precision auto] [--json FILE]";

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        model: PathBuf::new(),
        clients: vec![1, 4, 8],
        prompt_len: 128,
        gen: 64,
        rounds: 2,
        precision: "auto".into(),
        json: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--model" => o.model = PathBuf::from(value()?),
            "--clients" => {
                o.clients = value()?
                    .split(',')
                    .map(|v| {
                        v.parse()
                            .map_err(|_| format!("--clients: not a number: {v}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--prompt-len" => o.prompt_len = number(value()?)?,
            "--gen" => o.gen = number(value()?)?,
            "--rounds" => o.rounds = number(value()?)?,
            "--precision" => o.precision = value()?,
            "--json" => o.json = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if o.model.as_os_str().is_empty() {
        return Err("--model DIR is required (e.g. `cargo xtask bench-model --out DIR`)".into());
    }
    if o.clients.contains(&0) || o.gen < 2 || o.prompt_len == 0 || o.rounds == 0 {
        return Err("--clients > 0, --gen >= 2, --prompt-len and --rounds >= 1".into());
    }
    Ok(o)
}

/// One streamed request's timings: time to the first token, the gaps between tokens.
struct Timing {
    ttft: f64,
    gaps: Vec<f64>,
    tokens: usize,
}

/// Streams one completion and times its chunks.
fn stream_one(address: &str, body: &str) -> Result<Timing, String> {
    let mut s = TcpStream::connect(address).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let start = Instant::now();
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let (mut last, mut ttft, mut gaps, mut tokens) = (start, None, Vec::new(), 0);
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| e.to_string())?;
        if line.starts_with("HTTP/1.1 ") && !line.contains(" 200 ") {
            return Err(format!("server answered {line}"));
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value =
            serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
        if v.get("error").is_some() {
            return Err(data.to_string());
        }
        // One chunk per token (a token that only starts a character sends no chunk).
        if v["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
        {
            let now = Instant::now();
            match ttft {
                None => ttft = Some((now - start).as_secs_f64()),
                Some(_) => gaps.push((now - last).as_secs_f64()),
            }
            last = now;
            tokens += 1;
        }
    }
    Ok(Timing {
        ttft: ttft.unwrap_or(f64::NAN),
        gaps,
        tokens,
    })
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn start_server(root: &Path, o: &Options, max_seqs: usize) -> Result<(Child, String), String> {
    let binary = root.join("target/release/qwen2");
    let mut child = Command::new(&binary)
        .args(["serve", "--model"])
        .arg(&o.model)
        .args([
            "--port",
            "0",
            "--precision",
            &o.precision,
            "--max-seqs",
            &max_seqs.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    let address = loop {
        let line = lines
            .next()
            .ok_or("the server ended before listening")?
            .map_err(|e| e.to_string())?;
        eprintln!("  {line}");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
    };
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.contains("ready") || line.contains("error") {
                eprintln!("  {line}");
            }
        }
    });
    let t = Instant::now();
    loop {
        let ok = TcpStream::connect(&address).ok().and_then(|mut s| {
            s.write_all(
                format!("GET /health HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .ok()?;
            let mut first = String::new();
            BufReader::new(s).read_line(&mut first).ok()?;
            Some(first.contains(" 200 "))
        });
        if ok == Some(true) {
            return Ok((child, address));
        }
        if t.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            return Err("the server did not become ready in 5 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn run(root: &Path, args: &[String]) -> ExitCode {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    eprintln!("== building the release CLI");
    let built = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["build", "--release", "-p", "qwen2-cli"])
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("xtask: cargo build --release -p qwen2-cli failed");
        return ExitCode::FAILURE;
    }
    let max_seqs = o.clients.iter().copied().max().unwrap_or(1);
    let (mut child, address) = match start_server(root, &o, max_seqs) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("xtask: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Prompt ids from the middle of the vocabulary; eos ids suppressed.
    let prompt: Vec<u32> = (0..o.prompt_len as u32)
        .map(|i| 1000 + (i * 37) % 20000)
        .collect();
    let body = serde_json::json!({
        "prompt": prompt, "max_tokens": o.gen, "temperature": 0, "stream": true,
        "logit_bias": {"151643": -100, "151644": -100, "151645": -100},
    })
    .to_string();
    let mut rows = Vec::new();
    println!("| clients | aggregate decode tok/s | vs 1 client | TTFT p50 / p90 (s) | inter-token p50 / p90 (ms) |");
    println!("|---|---|---|---|---|");
    let mut single = None;
    for &clients in &o.clients {
        let t = Instant::now();
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                let (address, body, rounds) = (address.clone(), body.clone(), o.rounds);
                std::thread::spawn(move || {
                    (0..rounds)
                        .map(|_| stream_one(&address, &body))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let results: Vec<Result<Timing, String>> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect();
        let wall = t.elapsed().as_secs_f64();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            eprintln!("xtask: a request failed: {e}");
            let _ = child.kill();
            return ExitCode::FAILURE;
        }
        let timings: Vec<Timing> = results.into_iter().filter_map(Result::ok).collect();
        let tokens: usize = timings.iter().map(|t| t.tokens).sum();
        let mut ttft: Vec<f64> = timings.iter().map(|t| t.ttft).collect();
        let mut gaps: Vec<f64> = timings
            .iter()
            .flat_map(|t| t.gaps.iter().copied())
            .collect();
        let rate = tokens as f64 / wall;
        let base = *single.get_or_insert(rate);
        println!(
            "| {clients} | {rate:.1} | {:.2}x | {:.2} / {:.2} | {:.0} / {:.0} |",
            rate / base,
            percentile(&mut ttft, 0.5),
            percentile(&mut ttft, 0.9),
            1000.0 * percentile(&mut gaps, 0.5),
            1000.0 * percentile(&mut gaps, 0.9)
        );
        rows.push(serde_json::json!({
            "clients": clients, "requests": timings.len(), "generated_tokens": tokens, "seconds": wall,
            "aggregate_tokens_per_s": rate, "ttft_p50_s": percentile(&mut ttft, 0.5), "ttft_p90_s": percentile(&mut ttft, 0.9),
            "itl_p50_s": percentile(&mut gaps, 0.5), "itl_p90_s": percentile(&mut gaps, 0.9),
        }));
    }
    // SIGTERM, so the server shuts down as it would for a user.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    if let Some(path) = &o.json {
        let report = serde_json::json!({"model": o.model, "prompt_len": o.prompt_len, "gen": o.gen, "precision": o.precision, "levels": rows});
        if let Err(e) = std::fs::write(path, report.to_string()) {
            eprintln!("xtask: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
