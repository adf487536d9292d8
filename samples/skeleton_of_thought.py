"""Skeleton of thought (tip suggestion): write a short outline, expand every point in its own
branch at the same time, then summarize with the expansions in context."""

import sglc as sgl


@sgl.function
def tip_suggestion(s, topic, num_tips=2):
    s += f"Here are {num_tips} short tips for {topic}.\n"
    for i in range(num_tips):
        s += f"{i + 1}." + sgl.gen(f"tip_{i + 1}", max_tokens=12, stop=["\n", ".", ":"]) + "\n"
    forks = s.fork(num_tips)
    for i, f in enumerate(forks):
        f += f"Now, expand tip {i + 1} into a short paragraph:\n"
        f += sgl.gen("detailed_tip", max_tokens=32, stop="\n\n")
    for i in range(num_tips):
        s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
    s += "In summary," + sgl.gen("summary", max_tokens=24, stop="\n")


def main(topic="staying healthy"):
    state = tip_suggestion.run(topic=topic, temperature=0)
    print(state.text())
    return state


if __name__ == "__main__":
    main()
