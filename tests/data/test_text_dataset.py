"""TextDataset / collate_text / build_train_dataset: loss mask, truncation, padding."""

from __future__ import annotations

import torch

from sparsetune.config.schema import DataConfig
from sparsetune.data import build_train_dataset, collate_vision
from sparsetune.data.prompts import format_prompt
from sparsetune.data.text import IGNORE_INDEX, TextDataset, collate_text, encode_pair
from sparsetune.data.types import Example, Splits
from sparsetune.models.tiny import byte_tokenizer

TOK = byte_tokenizer()


def _decode(ids) -> str:
    return TOK.decode([int(i) for i in ids], skip_special_tokens=False)


def test_loss_mask_covers_exactly_the_answer_and_eos():
    ex = Example(prompt="What is 17 + 25?", answer="42", task="t")
    item = TextDataset([ex], TOK, max_length=512, template="alpaca")[0]
    ids, labels = item["input_ids"], item["labels"]
    assert ids.dtype == labels.dtype == torch.long and ids.dim() == labels.dim() == 1
    answer_pos = labels != IGNORE_INDEX
    # the trained positions are the answer bytes plus the closing eos, and labels copy input_ids there
    assert torch.equal(labels[answer_pos], ids[answer_pos])
    assert _decode(ids[answer_pos]) == "42</s>"
    # everything before is the formatted prompt and carries no loss
    assert _decode(ids[~answer_pos]) == format_prompt("What is 17 + 25?", "alpaca")
    assert int(answer_pos.nonzero()[0]) == int((~answer_pos).sum())  # prompt strictly first
    assert _decode(ids) == format_prompt("What is 17 + 25?", "alpaca") + "42</s>"


def test_plain_template_and_bos_option():
    ex = Example(prompt="Q", answer="A", task="t")
    item = TextDataset([ex], TOK, max_length=64, template="plain", add_bos=True)[0]
    assert item["input_ids"].tolist() == [TOK.bos_token_id, ord("Q"), ord("\n"), ord("A"), TOK.eos_token_id]
    assert item["labels"].tolist() == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, ord("A"), TOK.eos_token_id]


def test_left_truncation_keeps_the_answer():
    prompt = "".join(f"w{i} " for i in range(200)) + "END"
    ex = Example(prompt=prompt, answer="the answer", task="t")
    item = TextDataset([ex], TOK, max_length=48, template="plain")[0]
    ids, labels = item["input_ids"], item["labels"]
    assert len(ids) == 48
    assert _decode(ids).endswith("END\nthe answer</s>")
    assert _decode(ids[labels != IGNORE_INDEX]) == "the answer</s>"
    assert not _decode(ids).startswith("w0 ")  # the start of the prompt went


def test_overlong_answer_is_cut_from_the_right_but_the_prompt_tail_stays():
    input_ids, labels = encode_pair(list(range(100)), list(range(1000, 1100)), max_length=40, eos_id=7)
    assert len(input_ids) == 40
    prompt_part = [i for i, lab in zip(input_ids, labels) if lab == IGNORE_INDEX]
    assert prompt_part == list(range(90, 100))  # last quarter of the budget is prompt
    assert [lab for lab in labels if lab != IGNORE_INDEX] == list(range(1000, 1030))


def test_collate_right_pads_and_masks():
    items = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7])},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
    ]
    batch = collate_text(items, pad_id=258)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 258, 258]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_build_train_dataset_text_batches_through_a_dataloader():
    train = [Example(prompt=f"p{i}" * (i + 1), answer=str(i), task="t") for i in range(5)]
    splits = Splits(kind="text", train=train, val=[], test=[])
    cfg = DataConfig(max_length=32, prompt_template="plain")
    dataset, collate = build_train_dataset(splits, TOK, cfg)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=5, collate_fn=collate)))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 5
    last = batch["input_ids"][0, batch["attention_mask"][0].sum():]
    assert (last == TOK.pad_token_id).all()


def test_build_train_dataset_vision_stacks():
    items = [{"pixel_values": torch.full((1, 4, 4), float(i)), "labels": i} for i in range(3)]
    splits = Splits(kind="vision", train=items, val=[], test=[], num_classes=3)
    dataset, collate = build_train_dataset(splits, None, DataConfig(kind="vision"))
    batch = collate([dataset[0], dataset[2]])
    assert batch["pixel_values"].shape == (2, 1, 4, 4)
    assert batch["labels"].tolist() == [0, 2]
    assert collate is collate_vision
