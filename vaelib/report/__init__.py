"""Report stage: notebooks executed headlessly into HTML reports, compared and checked.

- ``pipeline``: ``vaelib run``: the numbered notebooks executed by papermill into ``reports/<run>/``.
- ``sweep``: ``vaelib sweep``: several params files run and compared on one page.
- ``html``: executed notebooks exported to HTML, and the index pages of a run and of all runs.
- ``browser_check``: ``vaelib check``: every report page loaded in headless Chromium.
- ``listening_map``: the standalone Bokeh page that plays the notes on the maps of mu (05, ``vaelib encode``).
- ``explorer``: 06's live explorer: ipywidgets over ``vaelib.analysis.explore``, and its report figures.
- ``training_live``: an ``on_epoch`` callback showing the epochs so far as a table updated in place (02).
- ``plots``: the figures of the notebooks and pages; they draw what they are given.
"""
