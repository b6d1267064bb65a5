"""What ``pybert bench`` ships: ``cpu`` (the engine in fp32, bf16 and int8 against the eager
models, torch.compile and ONNX Runtime) and ``gpu`` (BERT-base in fp16 against Hugging Face,
torch.compile and TransformerEncoder). Developer-only benchmarks live in benchmarks/."""
