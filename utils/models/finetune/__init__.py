"""What every fine-tuned backend shares, and no backend owns: where the base weights come from (``hub``), the
fingerprinted checkpoint folder that resumes across sessions (``checkpoints``), the time budget and its progress
display (``budget``), and the device and dtype rules (``device``). The backends import it; it imports no backend."""
