"""The emergence study: the questions the challenge was posed for.

1. How emergent is each prefix: how hard is the target's next-token distribution to predict from
   the small models (KL to the best predictor, its surprisal of the target's top token, the jump
   over the scaling trend)?
2. What does predicting it buy: speculative decoding with drafts built from the small models,
   and cascades that call the target only when the predictor is unsure.
3. Where does emergence live: the same measures on every prefix set (in-context copying,
   few-shot prompts, chain of thought) and along training time, beside a noise ceiling.

`emergence-model study` (emergence_model/commands/study.py; `python -m emergence_model.study`)
runs it; `ladder.study_ladder` is the API. Its default run on the offline demo is the demo's
(emergence_model/demo/study.py): this package imports no demo module.
"""
