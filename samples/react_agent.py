"""A ReAct-style agent: the model thinks, picks a tool with `select`, and Python runs the tool
and branches on what the model chose."""

import ast
import operator

import sglc as sgl

FACTS = {
    "eiffel tower": "The Eiffel Tower is 330 metres tall and stands in Paris.",
    "paris": "Paris is the capital of France, with about 2.1 million inhabitants.",
    "mount everest": "Mount Everest is 8849 metres high.",
    "mount fuji": "Mount Fuji is 3776 metres high and stands in Japan.",
}

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}


def calculate(expression: str) -> str:
    """Evaluate + - * / over numbers (no names, no calls)."""
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError("unsupported expression")
    try:
        return str(ev(ast.parse(expression.strip(), mode="eval").body))
    except (ValueError, SyntaxError, ZeroDivisionError) as e:
        return f"error: {e}"


def lookup(entity: str) -> str:
    key = entity.strip().strip(".").lower()
    return FACTS.get(key, f"no entry for {entity.strip()!r}")


TOOLS = {"lookup": lookup, "calculate": calculate}

PROMPT = """Answer the question using the tools lookup[entity] and calculate[expression].

Question: How tall is Mount Everest in kilometres?
Thought: I need the height of Mount Everest.
Action: lookup[Mount Everest]
Observation: Mount Everest is 8849 metres high.
Thought: I convert metres to kilometres.
Action: calculate[8849 / 1000]
Observation: 8.849
Thought: I know the answer.
Action: finish[8.849 km]

Question: How many people live in Paris, in millions?
Thought: I need the population of Paris.
Action: lookup[Paris]
Observation: Paris is the capital of France, with about 2.1 million inhabitants.
Thought: I know the answer.
Action: finish[2.1 million]

"""


@sgl.function
def react(s, question, max_steps=4):
    s += PROMPT + "Question: " + question + "\n"
    for _ in range(max_steps):
        s += "Thought:" + sgl.gen("thought", max_tokens=20, stop="\n") + "\n"
        s += "Action: " + sgl.select("action", choices=["lookup", "calculate", "finish"])
        s += "[" + sgl.gen("arg", max_tokens=16, stop=["]", "\n"]) + "]\n"
        if s["action"] == "finish":
            return s["arg"].strip()
        s += "Observation: " + TOOLS[s["action"]](s["arg"]) + "\n"
    return None


def main(question="How tall is the Eiffel Tower in kilometres?"):
    state = react.run(question=question, temperature=0)
    print(state.text()[len(PROMPT):])
    print("answer:", state.ret_value)
    return state.ret_value


if __name__ == "__main__":
    main()
