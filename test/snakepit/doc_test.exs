defmodule Snakepit.DocTest do
  # The examples in the docs run against the :default pool started in test_helper.exs.
  use ExUnit.Case, async: true
  doctest Snakepit
  doctest Snakepit.Error
  doctest Snakepit.Config
  doctest Snakepit.Venv
  doctest Snakepit.Config.AppEnv
  doctest Snakepit.Orphans
  doctest Snakepit.Correlation
  doctest Snakepit.Telemetry
  doctest Snakepit.SessionHelpers
  doctest Snakepit.CallOptions
  doctest Snakepit.Pool, only: [fetch: 1]
  doctest Snakepit.Adapter
end
