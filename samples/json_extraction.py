"""Structured extraction: fields constrained by regexes and dtypes, and a whole object
constrained by a JSON schema; the outputs parse by construction."""

import json

import sglc as sgl

TEXT = ("Marie Curie was a physicist and chemist born in Warsaw in 1867. She won the Nobel "
        "Prize twice.")

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "birth_year": {"type": "integer"},
        "city": {"type": "string", "maxLength": 16},
    },
    "required": ["name", "birth_year", "city"],
}


@sgl.function
def extract_fields(s, text):
    s += "Read the text and fill in the fields.\n\nText: " + text + "\n\n"
    s += "Name: " + sgl.gen("name", max_tokens=8, regex=r"[A-Z][a-z]+ [A-Z][a-z]+") + "\n"
    s += "Born in year: " + sgl.gen("year", max_tokens=6, regex=r"1[0-9]{3}") + "\n"
    s += "Nobel prize winner (True/False): " + sgl.gen("nobel", dtype=bool) + "\n"


@sgl.function
def extract_json(s, text):
    s += "Read the text and write the person as JSON.\n\nText: " + text + "\n\nJSON: "
    s += sgl.gen("person", max_tokens=48, json_schema=json.dumps(PERSON_SCHEMA))


def main(text=TEXT):
    fields = extract_fields.run(text=text, temperature=0)
    record = {"name": fields["name"], "year": int(fields["year"]),
              "nobel": fields["nobel"] == "True"}
    print("fields:", record)
    person = json.loads(extract_json.run(text=text, temperature=0)["person"])
    print("json:  ", person)
    return record, person


if __name__ == "__main__":
    main()
