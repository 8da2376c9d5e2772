"""Stage: the offline MVM label cache, filled by running the tokenizer once over every video (docs/design.md, "Label cache")."""
