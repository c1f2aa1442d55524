"""The ``vlm`` backend: any chat vision-language model behind transformers' image-text-to-text interface
(``AutoProcessor`` with the model's chat template, ``AutoModelForImageTextToText``): the Qwen2-VL family (Qwen2-VL,
Qwen2.5-VL, Qwen3-VL) and Idefics3 / SmolVLM, fine-tuned with LoRA and answering in batches."""
