"""halluc: study and mitigate the hallucinations that fine-tuning causes in language models."""
