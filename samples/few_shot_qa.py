"""Few-shot question answering: one program, a batch of questions, a shared prompt prefix.

run_batch submits every program at once; the few-shot examples every prompt starts with are
computed once and then read from the prefix cache."""

import sglc as sgl

EXAMPLES = """Answer each question with a few words.

Question: What is the capital of Germany?
Answer: Berlin

Question: How many legs does a spider have?
Answer: Eight

Question: What color is the sky on a clear day?
Answer: Blue

Question: Who wrote Romeo and Juliet?
Answer: William Shakespeare

Question: What is the largest planet in the solar system?
Answer: Jupiter
"""

QUESTIONS = [
    "What is the capital of France?",
    "How many days are in a week?",
    "What is the boiling point of water in Celsius?",
    "Which animal is known as the king of the jungle?",
    "What is the opposite of hot?",
    "How many wheels does a bicycle have?",
    "What do bees make?",
    "What is the chemical symbol for gold?",
]


@sgl.function
def few_shot_qa(s, question):
    s += EXAMPLES
    s += "\nQuestion: " + question + "\n"
    s += "Answer:" + sgl.gen("answer", max_tokens=12, stop="\n")


def main(questions=QUESTIONS):
    states = few_shot_qa.run_batch([{"question": q} for q in questions], temperature=0)
    answers = [st["answer"].strip() for st in states]
    for q, a in zip(questions, answers):
        print(f"{q:50s} -> {a}")
    return answers


if __name__ == "__main__":
    main()
