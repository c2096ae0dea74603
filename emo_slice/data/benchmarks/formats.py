"""Dataset rows -> prompts and choices, exactly as lm-evaluation-harness 0.4.13's task configs build them.

Each converter takes one row (columns as on the Hub) and gives a `Doc`: lm-eval's doc_to_text (the
context), doc_to_choice (the choice strings, without the target delimiter) and doc_to_target (the gold
index). The target delimiter is lm-eval's default, one space, for every task here. Winogrande is lm-eval's
"multiple input" task: each option fills the blank in its own context (`contexts`) and the rest of the
sentence after the blank, the same for every option, is the one continuation scored.

The `*_mc` converters give OLMES's multiple-choice format (oe_eval `make_mcq_prompt`): the question, then
each choice on its own line as " A. text", then "Answer:"; the choices scored are the letters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from emo_slice.data.sources import LETTERS

DELIMITER = " "  # lm-eval's default target_delimiter (every task here keeps it)
FEWSHOT_DELIMITER = "\n\n"


def hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag preprocess: " [title]" becomes ". ", other [tags] go, double spaces become one."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@dataclass
class Doc:
    context: str  # lm-eval's doc_to_text (Winogrande: the sentence before the blank)
    choices: list[str]  # lm-eval's doc_to_choice, as given (Winogrande: the rest after the blank, per option)
    gold: int
    contexts: list[str] | None = None  # Winogrande: one context per option (the blank filled)

    def demo(self) -> str:
        """The example as a few-shot demonstration: context, delimiter, gold choice (lm-eval's build_qa_turn)."""
        ctx = self.contexts[self.gold] if self.contexts else self.context
        return ctx + DELIMITER + self.choices[self.gold] + FEWSHOT_DELIMITER


class RowError(ValueError):
    """A row that does not have the benchmark's shape (the loader names the row and the dataset)."""


def _need(row: dict, *names: str) -> list:
    missing = [n for n in names if n not in row]
    if missing:
        raise RowError(f"has no column {', '.join(map(repr, missing))} (columns: {', '.join(sorted(row))})")
    return [row[n] for n in names]


def mcq_prompt(question: str, choices: list[str], question_prefix: str = "Question: ") -> str:
    """OLMES's multiple-choice prompt: labels after a space (" A. ..."), then "Answer:"."""
    lines = "\n".join(f" {LETTERS[i]}. {text}" for i, text in enumerate(choices))
    return f"{question_prefix}{question}\n{lines}\nAnswer:"


def _letters(n: int) -> list[str]:
    return list(LETTERS[:n])


def arc(row: dict) -> Doc:
    question, choices, key = _need(row, "question", "choices", "answerKey")
    return Doc(f"Question: {question}\nAnswer:", list(choices["text"]), list(choices["label"]).index(key))


def arc_mc(row: dict) -> Doc:
    question, choices, key = _need(row, "question", "choices", "answerKey")
    texts = list(choices["text"])
    return Doc(mcq_prompt(question, texts), _letters(len(texts)), list(choices["label"]).index(key))


def hellaswag(row: dict) -> Doc:
    label, ctx_a, ctx_b, endings, label_ = _need(row, "activity_label", "ctx_a", "ctx_b", "endings", "label")
    ctx = ctx_a + " " + ctx_b.capitalize()
    return Doc(hellaswag_clean(label + ": " + ctx), [hellaswag_clean(e) for e in endings], int(label_))


def piqa(row: dict) -> Doc:
    goal, sol1, sol2, label = _need(row, "goal", "sol1", "sol2", "label")
    return Doc(f"Question: {goal}\nAnswer:", [sol1, sol2], int(label))


def piqa_mc(row: dict) -> Doc:
    goal, sol1, sol2, label = _need(row, "goal", "sol1", "sol2", "label")
    return Doc(mcq_prompt(goal, [sol1, sol2], "Goal: "), _letters(2), int(label))


def winogrande(row: dict) -> Doc:
    sentence, opt1, opt2, answer = _need(row, "sentence", "option1", "option2", "answer")
    if "_" not in sentence:
        raise RowError("has no blank ('_') in its sentence")
    idx = sentence.index("_")
    rest = sentence[idx + 1 :].strip()
    gold = {"1": 0, "2": 1}.get(str(answer))
    if gold is None:
        raise RowError(f"has answer {answer!r}, not '1' or '2'")
    return Doc(sentence[:idx], [rest, rest], gold, contexts=[sentence[:idx] + opt for opt in (opt1, opt2)])


def boolq(row: dict) -> Doc:
    passage, question, label = _need(row, "passage", "question", "label")
    return Doc(f"{passage}\nQuestion: {question}?\nAnswer:", ["no", "yes"], int(label))


def openbookqa(row: dict) -> Doc:
    stem, choices, key = _need(row, "question_stem", "choices", "answerKey")
    return Doc(stem, list(choices["text"]), list(choices["label"]).index(key.lstrip()))


def openbookqa_mc(row: dict) -> Doc:
    stem, choices, key = _need(row, "question_stem", "choices", "answerKey")
    texts = list(choices["text"])
    return Doc(mcq_prompt(stem, texts), _letters(len(texts)), list(choices["label"]).index(key.lstrip()))


def sciq(row: dict) -> Doc:
    support, question, d1, d2, d3, correct = _need(
        row, "support", "question", "distractor1", "distractor2", "distractor3", "correct_answer"
    )
    return Doc(f"{support.lstrip()}\nQuestion: {question}\nAnswer:", [d1, d2, d3, correct], 3)


def commonsense_qa(row: dict) -> Doc:
    question, choices, key = _need(row, "question", "choices", "answerKey")
    t = list(choices["text"])
    if len(t) != 5:
        raise RowError(f"has {len(t)} choices; commonsense_qa's prompt lists five")
    text = f"Question: {question.strip()}\n" + "".join(f"{LETTERS[i]}. {t[i]}\n" for i in range(5)) + "Answer:"
    return Doc(text, _letters(5), _letters(5).index(key))


def mmlu(row: dict) -> Doc:
    question, choices, answer = _need(row, "question", "choices", "answer")
    c = list(choices)
    text = f"{question.strip()}\n" + "".join(f"{LETTERS[i]}. {c[i]}\n" for i in range(4)) + "Answer:"
    return Doc(text, _letters(4), int(answer))


def mmlu_mc(row: dict) -> Doc:
    question, choices, answer = _need(row, "question", "choices", "answer")
    return Doc(mcq_prompt(question.strip(), list(choices)), _letters(len(choices)), int(answer))


def mmlu_pro_mc(row: dict) -> Doc:
    question, options, answer = _need(row, "question", "options", "answer_index")
    options = [o.strip() for o in options][:10]
    return Doc(mcq_prompt(question.strip(), options), _letters(len(options)), int(answer))


CONVERTERS = {
    f.__name__: f
    for f in (
        arc,
        arc_mc,
        hellaswag,
        piqa,
        piqa_mc,
        winogrande,
        boolq,
        openbookqa,
        openbookqa_mc,
        sciq,
        commonsense_qa,
        mmlu,
        mmlu_mc,
        mmlu_pro_mc,
    )
}
