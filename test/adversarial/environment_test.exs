defmodule Snakepit.Adversarial.EnvironmentTest do
  # A pool's :env reaches its workers as given, and what the pool itself
  # sets cannot be overridden by accident (issue 9).
  use ExUnit.Case, async: true
  @moduletag :capture_log
  import Snakepit.TestPools

  alias Snakepit.Error

  @hostile Path.expand("../support/hostile_worker.py", __DIR__)

  defp hostile_opts(extra) do
    opts(
      [size: 1, python: @hostile, adapter: "hostile.Worker", heartbeat_interval: :infinity] ++
        extra
    )
  end

  defp secret, do: "s3cr3t-#{System.unique_integer([:positive])}"

  test "the worker sees :env as given; a PYTHONUNBUFFERED there replaces the pool's" do
    pool =
      start_pool(
        hostile_opts(env: %{"APP_SETTING" => "a=b c ü", APP_ATOM: :yes, PYTHONUNBUFFERED: "x"})
      )

    getenv = &Snakepit.execute("getenv", %{name: &1}, pool: pool)
    assert getenv.("APP_SETTING") == {:ok, "a=b c ü"}
    assert getenv.("APP_ATOM") == {:ok, "yes"}
    assert getenv.("PYTHONUNBUFFERED") == {:ok, "x"}
  end

  test "a name with = or an empty one never reaches a worker: the pool refuses to start" do
    for env <- [[{"A=B", "c"}], [{"", "c"}], [{"PYTHONPATH", "/x"}], [{"SNAKEPIT_POOL", "x"}]] do
      assert {:error, %Error{category: :validation, details: %{option: :env}}} =
               Snakepit.Pool.start_link(hostile_opts(env: env))
    end
  end
end
