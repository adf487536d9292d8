"""Every sample program runs end to end on the default model (via its `main`)."""

import importlib.util
import json
import re
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"sample_{name}", SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_sample_is_tested_and_runs_as_a_script():
    tested = {n.removeprefix("test_") for n in globals() if n.startswith("test_")}
    for path in SAMPLES.glob("*.py"):
        assert path.stem in tested, f"{path.name} has no test"
        assert 'if __name__ == "__main__":' in path.read_text()


def test_few_shot_qa(runtime):
    answers = load("few_shot_qa").main()
    assert len(answers) == 8 and "Paris" in answers[0]


def test_multi_turn_chat(runtime):
    messages = load("multi_turn_chat").main()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert all(m["content"] for m in messages)


def test_classification(runtime):
    sample = load("classification")
    labels = sample.main()
    assert set(labels) <= set(sample.LABELS) and labels[0] == "negative"


def test_json_extraction(runtime):
    record, person = load("json_extraction").main()
    assert record["name"] == "Marie Curie" and isinstance(record["year"], int)
    assert set(person) == {"name", "birth_year", "city"}
    json.dumps(person)


def test_fork_judge(runtime):
    answers, best = load("fork_judge").main()
    assert len(answers) == 3 and 1 <= best <= 3


def test_react_agent(runtime):
    sample = load("react_agent")
    assert sample.calculate("8849 / 1000") == "8.849"
    answer = sample.main()
    state = sample.react.run(question="How tall is the Eiffel Tower in kilometres?",
                             temperature=0)
    assert state.ret_value == answer  # main() runs the same greedy program
    steps = re.findall(r"Thought:[^\n]*\nAction: (lookup|calculate|finish)\[([^\]\n]*)\]\n"
                       r"(?:Observation: ([^\n]*)\n)?", state.text()[len(sample.PROMPT):])
    assert steps, state.text()
    for action, arg, observation in steps:  # each observation is what the tool returned
        assert observation == ("" if action == "finish" else sample.TOOLS[action](arg))
    if answer is None:
        assert len(steps) == 4 and steps[-1][0] != "finish"  # ran out of steps
    else:
        assert steps[-1][0] == "finish" and answer == steps[-1][1].strip()


def test_tree_of_thought(runtime):
    leaves = load("tree_of_thought").main()
    assert len(leaves) == 4 and all(1 <= rating <= 5 for _, _, rating in leaves)


def test_skeleton_of_thought(runtime):
    state = load("skeleton_of_thought").main()
    assert "Tip 1:" in state.text() and "Tip 2:" in state.text()
    assert isinstance(state["summary"], str)
