"""Builders of the data the experiments read: a ladder on real text (`build_real_suite`) and the
Brown corpus as more of that text (`brown_text`)."""
