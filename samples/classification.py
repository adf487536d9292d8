"""Classification with `select`: the model scores each label and the most likely one wins;
no free-form text to parse."""

import sglc as sgl

LABELS = ["positive", "negative"]

PROMPT = """Classify the sentiment of each review as positive or negative.

Review: I loved this film, the acting was wonderful.
Sentiment: positive

Review: The food was cold and the waiter was rude.
Sentiment: negative

Review: Great value for the price, would buy again.
Sentiment: positive
"""

REVIEWS = [
    "Terrible service, I will never come back.",
    "Absolutely fantastic, best purchase this year!",
    "The battery died after two days. Very disappointing.",
    "A delightful book that I could not put down.",
]


@sgl.function
def classify(s, review):
    s += PROMPT
    s += "\nReview: " + review + "\n"
    s += "Sentiment: " + sgl.select("sentiment", choices=LABELS)


def main(reviews=REVIEWS):
    states = classify.run_batch([{"review": r} for r in reviews])
    labels = [st["sentiment"] for st in states]
    for r, label in zip(reviews, labels):
        print(f"{label:9s} | {r}")
    return labels


if __name__ == "__main__":
    main()
