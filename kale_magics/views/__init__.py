"""Views: pure functions from plans, runs and checks to text (terminals), HTML and SVG (notebooks, the panel).

One home for what every front end shows, so a step reads the same everywhere: one
duration format (:func:`~kale_magics.views.text.duration_text`), one wording of
states (:data:`~kale_magics.views.text.STATE_WORDS`), one DAG drawing
(:mod:`~kale_magics.views.dag`).
"""
