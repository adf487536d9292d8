"""Tree of thought: branch into several approaches, branch again into attempts for each, let
the model rate every leaf, and keep the best path. Every level's branches run concurrently."""

import sglc as sgl


@sgl.function
def tree_of_thought(s, question, num_approaches=2, num_attempts=2):
    s += "Question: " + question + "\n"
    approaches = s.fork(num_approaches)
    approaches += lambda i: f"Approach {i + 1}:" + sgl.gen("approach", max_tokens=16, stop="\n",
                                                           temperature=0.7)
    leaves = []
    for approach in approaches:
        attempts = approach.fork(num_attempts)
        attempts += "\nSolution:" + sgl.gen("solution", max_tokens=20, stop="\n",
                                            temperature=0.7)
        attempts += ("\nIs this solution correct and complete? Rating from 1 to 5: "
                     + sgl.select("rating", choices=["1", "2", "3", "4", "5"]))
        leaves += [(approach, attempt) for attempt in attempts]
    best_approach, best = max(leaves, key=lambda leaf: int(leaf[1]["rating"]))
    s += "Best approach:" + best_approach["approach"] + "\nSolution:" + best["solution"]
    return [(a["approach"].strip(), b["solution"].strip(), int(b["rating"])) for a, b in leaves]


def main(question="How can I cool down a hot room without air conditioning?"):
    state = tree_of_thought.run(question=question, temperature=0)
    for approach, solution, rating in state.ret_value:
        print(f"[{rating}] {approach} -> {solution}")
    print("\n" + state.text())
    return state.ret_value


if __name__ == "__main__":
    main()
