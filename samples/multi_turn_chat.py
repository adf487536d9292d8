"""Multi-turn chat: roles rendered with the model's own chat template, the second answer
streamed to the terminal as it is generated."""

import sglc as sgl


@sgl.function
def multi_turn_question(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant. Answer in one short sentence.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=32))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=32))


def main():
    state = multi_turn_question.run(
        question_1="What is the capital of the United Kingdom?",
        question_2="Name one famous landmark there.",
        temperature=0, stream=True)
    print("assistant (streamed): ", end="", flush=True)
    for piece in state.text_iter("answer_2"):
        print(piece, end="", flush=True)
    print()
    for m in state.messages():
        print(f"{m['role']:>9}: {m['content']}")
    return state.messages()


if __name__ == "__main__":
    main()
