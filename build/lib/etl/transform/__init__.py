"""Stage 2, the transform, by concern:

  lines        reading an export data file: chunks of whole lines, parsed, odd lines said why
  rows         converting parsed rows: filters, conversions, quarantine reasons (also the live service's
               forward writer's conversion, so the backfill and the writer cannot disagree)
  collisions   rows of a month that land on one destination key
  stage        the stage itself: plan -> run_task -> commit

Nothing is imported here, so the conversion modules can be used without the stage.
"""
