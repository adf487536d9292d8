"""The benchmark's workloads: SGLang programs with deterministic synthetic data and realistic
lengths (no network). Every program returns `finished(s[last variable])`, the time its last
generation completed, so a batch run also gives each program's latency."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import sglc as sgl

SUBJECTS = ["astronomy", "biology", "chemistry", "economics", "geography", "history", "law",
            "medicine", "music", "physics", "psychology", "statistics"]
_WORD_TEXT = ("river mountain engine garden letter window signal market bridge forest harbor "
              "lantern meadow orbit pepper quartz saddle timber velvet winter anchor basket "
              "candle desert echo falcon glacier hammer island jacket kettle ladder marble "
              "needle ocean pillow ribbon silver tunnel umbrella valley wagon yellow zephyr")
WORDS = _WORD_TEXT.split()


def finished(_value) -> float:
    """When the value it is given existed (the program's last generation)."""
    return time.perf_counter()


def _sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


# ---- programs ------------------------------------------------------------------------------------
@sgl.function
def mmlu_few_shot(s, shots, question):
    s += shots
    s += question + "\nAnswer:" + sgl.gen("answer", max_tokens=2, stop="\n", temperature=0)
    return finished(s["answer"])


@sgl.function
def hellaswag(s, context, question, endings):
    s += context
    s += question + sgl.select("ending", choices=endings)
    return finished(s["ending"])


@sgl.function
def react_agent(s, task, steps=3):
    s += ("Answer the question by thinking and acting. Actions: Search[entity], "
          "Lookup[keyword], Finish[answer].\n\n" + task + "\n")
    for i in range(steps):
        s += f"Thought {i + 1}:" + sgl.gen("thought", max_tokens=24, stop="\n", temperature=0)
        s += f"\nAction {i + 1}:" + sgl.gen("action", max_tokens=10, stop="\n", temperature=0)
        s += f"\nObservation {i + 1}: The result mentions {WORDS[i]} and {WORDS[i + 7]}.\n"
    return finished(s["action"])


@sgl.function
def tree_of_thought(s, question):
    s += "Question: " + question + "\n"
    forks = s.fork(2)
    for i, f in enumerate(forks):
        f += f"Approach {i + 1}:" + sgl.gen("plan", max_tokens=24, stop="\n", temperature=0)
        sub = f.fork(2)
        for j, g in enumerate(sub):
            g += f"\nStep {j + 1}:" + sgl.gen("step", max_tokens=16, stop="\n", temperature=0)
        sub.join()
    forks.join()
    s += "\nBest approach:" + sgl.gen("best", max_tokens=8, stop="\n", temperature=0)
    return finished(s["best"])


@sgl.function
def skeleton_of_thought(s, topic):
    s += sgl.user(f"Give a skeleton of 3 short points about {topic}.")
    s += sgl.assistant(sgl.gen("skeleton", max_tokens=32, temperature=0))
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += sgl.user(f"Expand point {i + 1} in one sentence.")
        f += sgl.assistant(sgl.gen("point", max_tokens=32, temperature=0))
    forks.join()
    return finished(s["point"])


@sgl.function
def llm_judge(s, answer):
    s += sgl.system("You are a strict judge of answers.")
    s += sgl.user("Judge this answer: " + answer)
    forks = s.fork(3)
    for f, dim in zip(forks, ["correctness", "clarity", "completeness"]):
        f += sgl.assistant(f"On {dim}, the answer" + sgl.gen("judgement", max_tokens=24,
                                                              temperature=0))
    forks.join()
    s += sgl.user("Summarize: " + " ".join(s["judgement"]))
    s += sgl.assistant(sgl.gen("summary", max_tokens=24, temperature=0))
    return finished(s["summary"])


@sgl.function
def json_decode(s, text):
    s += "Extract the person from the text as JSON.\nText: " + text + "\nJSON:\n"
    # each field's regex ends with the delimiter that closes it, so the field ends where the
    # model closes it (without, the model's '"' after "Mary Smith" is forbidden and the name
    # runs on to max_tokens: "Mary Smithsjohnsjohns")
    s += '{\n  "name": "' + sgl.gen("name", max_tokens=12, regex=r'[A-Z][a-z]+ [A-Z][a-z]+"',
                                    temperature=0)
    s += ',\n  "age": ' + sgl.gen("age", max_tokens=4, regex=r"[1-9][0-9]?,", temperature=0)
    s += '\n  "city": "' + sgl.gen("city", max_tokens=8, regex=r'[A-Z][a-z]+"', temperature=0)
    s += '\n}'
    return finished(s["city"])


@sgl.function
def multi_turn_chat(s, questions, max_tokens, turns=4):
    s += sgl.system("You are a helpful assistant.")
    for i in range(turns):  # a compile-time count (the compiler unrolls it)
        s += sgl.user(questions[i])
        s += sgl.assistant(sgl.gen("answer", max_tokens=max_tokens, temperature=0))
    return finished(s["answer"])


@sgl.function
def rag(s, documents, question):
    s += sgl.system("Answer using only the documents.")
    s += sgl.user("Documents:\n" + documents + "\n\nQuestion: " + question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=32, temperature=0))
    return finished(s["answer"])


# ---- data ----------------------------------------------------------------------------------------
def _mmlu(i: int) -> dict:
    rng = random.Random(i % len(SUBJECTS))
    subject = SUBJECTS[i % len(SUBJECTS)]
    shots = f"The following are multiple choice questions about {subject}.\n\n" + "".join(
        f"Question: {_sentence(rng)}\nA. {rng.choice(WORDS)}\nB. {rng.choice(WORDS)}\n"
        f"C. {rng.choice(WORDS)}\nD. {rng.choice(WORDS)}\nAnswer: {rng.choice('ABCD')}\n\n"
        for _ in range(5))
    q = random.Random(1000 + i)
    question = (f"Question: {_sentence(q)}\nA. {q.choice(WORDS)}\nB. {q.choice(WORDS)}\n"
                f"C. {q.choice(WORDS)}\nD. {q.choice(WORDS)}")
    return {"shots": shots, "question": question}


def _hellaswag(i: int) -> dict:
    rng = random.Random(7)
    context = "".join(f"{_sentence(rng, 20)} Ending: {_sentence(rng, 8)}\n\n" for _ in range(4))
    q = random.Random(2000 + i)
    return {"context": context, "question": _sentence(q, 20) + " Ending:",
            "endings": [" " + _sentence(q, 8) for _ in range(4)]}


def _questions(i: int, n: int, seed: int) -> list[str]:
    rng = random.Random(seed + i)
    return [f"What do you know about the {rng.choice(WORDS)} and the {rng.choice(WORDS)}?"
            for _ in range(n)]


def _documents() -> str:
    rng = random.Random(11)
    return "\n".join(f"[{k + 1}] {_sentence(rng, 40)}" for k in range(8))


@dataclass(frozen=True)
class Workload:
    name: str
    program: Callable
    make_args: Callable[[int], dict]
    about: str


WORKLOADS = {w.name: w for w in [
    Workload("mmlu_few_shot", mmlu_few_shot, _mmlu,
             "5-shot multiple choice, 12 subjects sharing their shots, 2-token answers"),
    Workload("hellaswag", hellaswag, _hellaswag,
             "4-shot context, select among 4 endings"),
    Workload("react_agent", react_agent,
             lambda i: {"task": f"Question: {_questions(i, 1, 300)[0]}"},
             "3 thought/action steps with observations between them"),
    Workload("tree_of_thought", tree_of_thought,
             lambda i: {"question": _questions(i, 1, 400)[0]},
             "2 approaches x 2 steps (nested forks), then a choice"),
    Workload("skeleton_of_thought", skeleton_of_thought,
             lambda i: {"topic": f"the {WORDS[i % len(WORDS)]}"},
             "a skeleton, then 3 points expanded in parallel (chat)"),
    Workload("llm_judge", llm_judge,
             lambda i: {"answer": _sentence(random.Random(500 + i), 30)},
             "3 judging branches, then a summary (chat)"),
    Workload("json_decode", json_decode,
             lambda i: {"text": f"{_sentence(random.Random(600 + i))} Mary Smith, aged "
                                f"{20 + i % 50}, lives in Paris."},
             "3 regex-constrained fields with JSON text between them"),
    Workload("chat_short", multi_turn_chat,
             lambda i: {"questions": _questions(i, 4, 700), "max_tokens": 16},
             "4 turns, 16-token answers"),
    Workload("chat_long", multi_turn_chat,
             lambda i: {"questions": _questions(i, 2, 800), "max_tokens": 96, "turns": 2},
             "2 turns, 96-token answers"),
    Workload("rag", rag,
             lambda i: {"documents": _documents(), "question": _questions(i, 1, 900)[0]},
             "8 retrieved documents (~450 tokens, shared) and a question"),
]}
