"""The language-model experiment (``dftnet lm``): the byte corpus, the small GPT, its training and
measurements."""
