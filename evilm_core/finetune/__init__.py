"""Stage 3: downstream tasks on a pre-trained E-ViLM (paper 4.2, Tables 1-4; docs/design.md, "Fine-tuning tasks")."""
