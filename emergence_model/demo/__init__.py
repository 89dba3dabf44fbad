"""The offline demo suite: a ladder of small GPT-NeoX models trained here, on CPU, from real text.

Seven models (six small ones and the target), shaped like Pythia's (untied embeddings, rotary
embeddings on 25% of each head, parallel residual), from 0.14M to 2.6M parameters. As in Pythia,
every model reads the same tokens in the same order: the batches are a function of the step and the
seed alone. The text is the English docstrings of the installed standard library, or a file of the
user's with their own tokenizer. `python -m emergence_model.demo build` trains it (a few minutes on
2 cores, reused afterwards); `python -m emergence_model.demo caches` also trains the target a second
time from another seed (the noise ceiling) and caches the suite on its prefix sets (demo-wiki,
demo-rte, demo-induction, demo-rte-fewshot), the target's checkpoints along its training (the
demo-steps suite) and the ceiling's pair (the demo-ceiling suite). `build --preset emergent`
builds a ladder on which copying random words back from the context emerges in the target alone
(config.PRESETS, synthetic.py).

Each model is saved with `save_pretrained` (tokenizer included) in its own directory under the
suite directory and is loaded back only through `from_pretrained`, exactly like a hub model, so the
suite goes through the same caching code as Pythia. Building is resumable: finished models are
skipped, and an interrupted one continues from its last training checkpoint.

    suite.json            configuration, corpus and tokenizer facts, each model's size, loss, time
    corpus.json           the training and held-out documents (prefixes come from both)
    tokenizer/            the tokenizer, as `save_pretrained` writes it
    models/demo-144k/     one `save_pretrained` directory per model (+ training.json)
    models/demo-2.6m-steps/step280/   the target kept along its training (demo-steps)
    models/demo-2.6m-seed1/           the target trained again from another seed (demo-ceiling)
    models/X.partial/     an unfinished model's training checkpoint
    caches/demo-wiki/     feature caches of the demo suite (`prepare_demo_caches`)
    caches/steps/, caches/ceiling/    of demo-steps and demo-ceiling (`prepare_demo_study_caches`)

One job per module, each importing only those above it:

    config.py       the configuration, the suite directory's layout, reading suite.json
    corpus.py       the documents: standard-library docstrings or a text file
    tokenizer.py    the byte-level BPE trained on them, or a tokenizer file of the user's
    synthetic.py    the emergent ladder's named synthetic share: copying and alternation windows
    prefix_sets.py  the prefix sets (wiki, rte, rte-fewshot, induction, random-copy and its
                    control), from the documents
    pretrain.py     the pretraining loop every model of the ladder goes through
    build.py        the ladder: plan, train, save and score each model; suite.json
    registry.py     the plugin: the demo's suites and prefix sources, registered with the core's
                    registries (loaded by name when a registry is first read)
    caches.py       build the suite, then cache it through the registries and `extract_suite`
    summary.py      what the caches show at a glance: expected-token curves, the noise ceiling
    study.py        the study's default run on the demo: its ladders and networks
    __main__.py     `python -m emergence_model.demo`, the command emergence_model/commands/demo.py

The core imports none of them; this file imports none of them either, so that
`emergence_model.demo.config` costs no torch.
"""
