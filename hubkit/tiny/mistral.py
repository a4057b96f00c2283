"""Tiny Mistral instruct model (transformers' MistralForCausalLM) with a byte-level BPE tokenizer trained here."""

from __future__ import annotations

from pathlib import Path

# Mistral-style chat template: [INST] user [/INST] answer</s>; a leading system message is prepended to the first turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] + '\n\n' %}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Training text for the tiny BPE tokenizer: a few hundred words on the hub's own subject.
_CORPUS = """\
A fine-tuning hub for vision foundation models. Depth Anything estimates relative depth from a single image; DPT
predicts dense depth; SAM segments any object from a point, a box or a mask prompt. BLIP writes a caption for a photo,
and Grounding DINO finds objects named in free text: a cat, a dog, a box on a pallet, a bolt, a gear or a robot arm.
We train small LoRA adapters on the frozen base model: rank eight or sixteen, alpha twice the rank, four images a batch.
Evaluation reports the absolute relative error and the root mean square error; invalid points are masked out.
Question: what is the depth of the nearest object? Answer: about four hundred millimetres from the camera.
Hello, how are you today? Please describe this image in one sentence. It shows a grey metal part on a white table.
The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100 3.14 -1 +1 = % # @ ! ? ( ) [ ] { } / :
"""


def tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",  # decoder-only: pad on the left so batched generate continues each prompt
        model_max_length=512,
        chat_template=CHAT_TEMPLATE,
    )


def build(out: Path) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    tok = tokenizer()
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=4096,  # the Segma class prompt alone is ~300 tokens
        sliding_window=None,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    MistralForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
