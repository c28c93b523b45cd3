"""The language-consistency reward of DeepSeek-R1 (the DeepSeek-R1 Nature paper, Eq. 7).

R = Num(target-language words in the reasoning) / Num(words in the reasoning).

"Language" is judged by **writing system**, from the Unicode name of each letter: a word is
in the target language when all its letters belong to the target's scripts. This catches
the mixing R1 was trained against (English reasoning drifting into Chinese), but it cannot
tell apart languages that share a script: English and French are both Latin.

Words are runs of letters (digits, punctuation and symbols are not words). Chinese and
Japanese are not written with spaces, so each Han, Hiragana or Katakana character counts as
one word. The reasoning is the last ``<reasoning_tag>`` span; a completion without one is
scored on its whole text. In a YAML config::

    rewards:
      - {name: language_consistency, language: en, reasoning_tag: think}

>>> language_consistency_reward(["q"] * 3, ["<reasoning>add 2 and 2</reasoning>",
...     "<reasoning>first 加上 two</reasoning>", "<reasoning>2 + 2 = 4</reasoning>"])
[1.0, 0.5, None]
"""

from __future__ import annotations

import unicodedata

from grpokit.answers import completion_text, tag_content
from grpokit.rewards.lookup import register_reward

__all__ = ["LANGUAGE_SCRIPTS", "language_consistency_reward", "letter_script", "target_share", "words"]

#: Language codes and script names a config may give as ``language``, and the scripts they accept.
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    "en": frozenset({"LATIN"}),
    "latin": frozenset({"LATIN"}),
    "zh": frozenset({"CJK"}),
    "cjk": frozenset({"CJK"}),
    "ja": frozenset({"CJK", "HIRAGANA", "KATAKANA"}),
    "ko": frozenset({"HANGUL"}),
    "ru": frozenset({"CYRILLIC"}),
    "cyrillic": frozenset({"CYRILLIC"}),
    "el": frozenset({"GREEK"}),
    "greek": frozenset({"GREEK"}),
    "ar": frozenset({"ARABIC"}),
    "arabic": frozenset({"ARABIC"}),
    "he": frozenset({"HEBREW"}),
    "hebrew": frozenset({"HEBREW"}),
    "hi": frozenset({"DEVANAGARI"}),
    "devanagari": frozenset({"DEVANAGARI"}),
    "th": frozenset({"THAI"}),
    "thai": frozenset({"THAI"}),
}

_ONE_CHARACTER_WORDS = frozenset({"CJK", "HIRAGANA", "KATAKANA"})


def letter_script(char: str) -> str:
    """The script of a letter: the first word of its Unicode name.

    >>> [letter_script(c) for c in "aé中я"]
    ['LATIN', 'LATIN', 'CJK', 'CYRILLIC']
    """
    return unicodedata.name(char, "UNKNOWN").split(" ", 1)[0]


def words(text: str) -> list[str]:
    """Runs of letters; each Han, Hiragana or Katakana character is a word of its own.

    >>> words("Add 2 apples, then 加上 three-ish.")
    ['Add', 'apples', 'then', '加', '上', 'three', 'ish']
    """
    found, current = [], []
    for char in unicodedata.normalize("NFC", text):
        if not char.isalpha():
            if current:
                found.append("".join(current))
                current = []
        elif letter_script(char) in _ONE_CHARACTER_WORDS:
            if current:
                found.append("".join(current))
                current = []
            found.append(char)
        else:
            current.append(char)
    if current:
        found.append("".join(current))
    return found


def target_share(text: str, scripts: frozenset[str]) -> float | None:
    """Share of the words of ``text`` written wholly in ``scripts``; None when it has no words.

    >>> target_share("so x равно 5", frozenset({"LATIN"})), target_share("= 5", frozenset({"LATIN"}))
    (0.6666666666666666, None)
    """
    all_words = words(text)
    if not all_words:
        return None
    inside = sum(all(letter_script(c) in scripts for c in word) for word in all_words)
    return inside / len(all_words)


def _scripts_for(language: str) -> frozenset[str]:
    """The scripts of a configured ``language``, with an error listing the known names."""
    scripts = LANGUAGE_SCRIPTS.get(language.lower()) if isinstance(language, str) else None
    if scripts is None:
        raise ValueError(f"language_consistency: unknown language {language!r}; expected one of "
                         f"{', '.join(LANGUAGE_SCRIPTS)}")
    return scripts


@register_reward("language_consistency")
def language_consistency_reward(prompts, completions, *, language: str = "en", reasoning_tag: str = "reasoning",
                                **kwargs) -> list[float | None]:
    """Share of the reasoning's words in ``language``'s script; None where the reasoning has no words."""
    scripts = _scripts_for(language)
    rewards = []
    for completion in completions:
        text = completion_text(completion)
        reasoning = tag_content(text, reasoning_tag)
        rewards.append(target_share(text if reasoning is None else reasoning, scripts))
    return rewards
