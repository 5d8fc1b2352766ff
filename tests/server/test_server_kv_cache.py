"""--cache-type-k / --cache-type-v on a real server: a quantized cache serves requests from real
clients."""

from __future__ import annotations

import openai
import pytest

from server_util import start

pytestmark = pytest.mark.slow


def greedy_answer(server) -> str:
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="none")
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "Name three colors."}],
                                           temperature=0, max_tokens=12)
    return reply.choices[0].message.content


def test_quantized_cache_serves_requests():
    answers = {}
    for flags in (("-ctk", "f16", "-ctv", "f16"), ("-ctk", "q8_0", "-ctv", "q8_0"),
                  ("--cache-type-k", "q8_0", "--cache-type-v", "q4_0")):
        server = start("-c", "512", "-t", "1", "-a", "m", *flags)
        try:
            answers[flags[1::2]] = greedy_answer(server)
        finally:
            server.stop()
    # the fidelity cost is measured in tests/test_kv_quant.py: near-ties may already flip the first token
    assert all(answer.strip() for answer in answers.values()), answers
