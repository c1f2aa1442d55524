"""The fine-tune learns and answers: the tiny PaliGemma memorises rendered labels through the project's own ``fit``,
the backend's ``predict`` (the merged model stage 03 runs) and the cleaning step, exact match.

The default suite runs it, so CI proves on every change that the PaliGemma path still learns: on the commits where
LoRA on the vision tower learnt at the full learning rate (c4e167e .. 407e310) it answered 1 of 16 rows with the
labels' token statistics instead of the image's label (README: "The memorisation check, and what broke it").
``bench/tiny_overfit.py`` is the longer version: several seeds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from utils.models.paligemma.memorise import memorise

pytestmark = pytest.mark.slow


def test_the_tiny_model_memorises_rendered_labels_through_fit_predict_and_cleaning(tmp_path: Path) -> None:
    # 16 rows and 1,200 steps: shorter runs memorise even with the broken learning rate (16/16 at 600 steps), which
    # loses the image later in training; about 40 s of training on 2 quiet cores
    result = memorise(tmp_path, rows=16, steps=1200)
    assert result.right >= 15, "\n".join(result.lines)


def test_a_tiny_chat_vlm_memorises_rendered_labels_through_its_chat_template(tmp_path: Path) -> None:
    # the vlm backend's fit, predict and the cleaning; Idefics3 is the faster of the two tiny families
    from utils.models.vlm.memorise import memorise as memorise_vlm

    result = memorise_vlm(tmp_path, "idefics3", rows=16, steps=300)
    assert result.right >= 15, "\n".join(result.lines)
