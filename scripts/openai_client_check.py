#!/usr/bin/env python3
"""Talks to a running `qwen2 serve` with the official `openai` Python client (pip install openai):
lists the models, runs a chat completion, a streamed one (its text must equal the plain one's,
greedy), a completion with logprobs, and checks that an error comes back as openai's exception.

Run: python3 scripts/openai_client_check.py --base-url http://127.0.0.1:8080/v1 [--api-key KEY]
Exit status 0 when every check passes; prints one line per check and a summary line.
"""
import argparse
import sys

import openai


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="none")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
    passed, failed = 0, 0

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            print(f"ok   {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            failed += 1

    model = {}

    def models():
        listing = client.models.list()
        ids = [m.id for m in listing.data]
        assert len(ids) == 1, ids
        model["id"] = ids[0]

    messages = [{"role": "user", "content": "Tell me a joke."}]
    plain = {}

    def chat():
        r = client.chat.completions.create(model=model["id"], messages=messages, max_tokens=12, temperature=0)
        c = r.choices[0]
        assert c.message.role == "assistant", c.message
        assert c.finish_reason in ("stop", "length"), c.finish_reason
        assert r.usage.completion_tokens >= 1 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        plain["text"], plain["usage"] = c.message.content, r.usage

    def chat_stream():
        stream = client.chat.completions.create(model=model["id"], messages=messages, max_tokens=12, temperature=0,
                                                stream=True, stream_options={"include_usage": True})
        text, reasons, ids, usage = "", [], set(), None
        for chunk in stream:
            ids.add(chunk.id)
            if chunk.usage is not None:
                usage = chunk.usage
            for c in chunk.choices:
                text += c.delta.content or ""
                if c.finish_reason:
                    reasons.append(c.finish_reason)
        assert len(ids) == 1, ids
        assert len(reasons) == 1, reasons
        assert text == plain["text"], (text, plain["text"])
        assert usage is not None and usage.completion_tokens == plain["usage"].completion_tokens, usage

    def completion_logprobs():
        r = client.completions.create(model=model["id"], prompt="Hello", max_tokens=5, temperature=0, logprobs=2)
        c = r.choices[0]
        assert "".join(c.logprobs.tokens) == c.text, (c.logprobs.tokens, c.text)
        assert all(lp <= 0 for lp in c.logprobs.token_logprobs), c.logprobs.token_logprobs

    def bad_request():
        try:
            client.chat.completions.create(model=model["id"], messages=messages, temperature=7)
        except openai.BadRequestError as e:
            assert e.status_code == 400
            assert "temperature" in str(e), str(e)
            return
        raise AssertionError("temperature 7 was accepted")

    check("models.list", models)
    if model:
        check("chat.completions.create", chat)
        if plain:
            check("chat.completions.create(stream=True, include_usage)", chat_stream)
        check("completions.create(logprobs=2)", completion_logprobs)
        check("a bad request raises openai.BadRequestError", bad_request)
    print(f"openai {openai.__version__} client: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
