"""Fork and judge: sample several answers in parallel branches, then let the model judge
which candidate is best. The question is computed once; the branches share it."""

import sglc as sgl


@sgl.function
def answer_and_judge(s, question, num_candidates=3):
    s += sgl.user(question + " Answer in one sentence.")
    forks = s.fork(num_candidates)
    forks += sgl.assistant(sgl.gen("answer", max_tokens=24, temperature=0.8))
    forks.join()  # s["answer"] is now the list of the branches' answers

    candidates = "".join(f"{i + 1}. {a.strip()}\n" for i, a in enumerate(s["answer"]))
    s += sgl.assistant("Here are some candidate answers:\n" + candidates)
    s += sgl.user("Which candidate is the most accurate? Reply with its number only.")
    s += sgl.assistant(sgl.select("best", choices=[str(i + 1) for i in range(num_candidates)]))


def main(question="Why do leaves change color in autumn?"):
    state = answer_and_judge.run(question=question)
    for i, answer in enumerate(state["answer"]):
        print(f"candidate {i + 1}: {answer.strip()}")
    best = int(state["best"])
    print(f"judge picks {best}: {state['answer'][best - 1].strip()}")
    return state["answer"], best


if __name__ == "__main__":
    main()
