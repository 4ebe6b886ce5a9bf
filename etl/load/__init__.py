"""The load: the stage (`stage`), its checks before writing (`preflight`), and the writing task it shares with
catch-up (`rows`: what is sent, `window`: how many requests in flight, `pump`: the task, `writer`: the lean
BatchWriteItem path). Nothing is imported here, so a module that needs the writing task loads no stage."""
