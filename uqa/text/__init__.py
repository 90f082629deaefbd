"""Text into model inputs: loading or training the tokenizer (tokenizer), cutting texts into words
that tokenize alone (segments), encoding questions and contexts in bulk (encoding), the sliding
windows and their answer labels (windows), and the tokenize stage's passes over chunks of rows
(passes)."""
