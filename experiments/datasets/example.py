"""The one record every dataset is turned into, so runners and scorers need not know
where an example came from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Example:
    """One question over one long document.

    ``context`` is the document the RLM holds as ``prompt``; ``question`` is asked
    separately. ``gold`` is the dataset's answer string, verbatim (scorers parse it).
    ``answer_type`` is set for OOLONG-synth only (its scorer branches on it).
    """

    id: str
    dataset: str
    context: str
    question: str
    gold: str
    question_type: str | None = None
    episodes: list[int] | None = None
    answer_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # The dataset's task instructions (answer format ...), a prefix of ``context`` for OOLONG; see
    # experiments/datasets/views.py. Set by the eval runner when the loader did not.
    instructions: str | None = None

    @property
    def prompt(self) -> str:
        """The official single-call input: document, newline, question."""
        return self.context + "\n" + self.question

    @property
    def context_chars(self) -> int:
        return len(self.context)

    def to_dict(self, *, with_context: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_context:
            d.pop("context")
        return d
