"""Catch-up: keep the index exact while the source tables keep changing, by concern:

  source    where a window's changes come from (an incremental export, an adopted one, the table's stream),
            all written in the incremental-export layout under `export/month=M/changes/window-NNNNN/`
  changes   the transform of a window's changes: images converted by the transform's own code, applied in
            write-time order to every touched key's rows, puts and deletes for the index
  stage     plan -> run_task (capture, changes, load) -> commit, window after window, and the month's driver

Nothing is imported here, so each part can be used without the others.
"""
