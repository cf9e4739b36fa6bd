defmodule Snakepit.Adversarial.DeepResultTest do
  # A result nested deeper than the decoder allows is refused with an error
  # that says so, not as an "invalid marker".
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  @fake Path.expand("../support/python/fake_worker.py", __DIR__)

  test "a result nested deeper than 256 levels says so" do
    pool = start_pool(size: 1, python: @fake, env: %{"FAKE_WORKER_MODE" => "deep_result"})
    assert {:error, %Error{category: :transport} = e} = Snakepit.execute("break", %{}, pool: pool)
    assert e.message =~ "nested deeper than 256 levels"
    refute e.message =~ "marker"
    assert {:ok, 2} = Snakepit.execute("echo", %{value: 2}, pool: pool)
  end

  test "the bridge refuses to send what it cannot encode that deep" do
    pool = start_pool(size: 1)
    assert {:ok, [[[nil]]]} = Snakepit.execute("nest", %{depth: 3}, pool: pool)
    assert {:error, %Error{} = e} = Snakepit.execute("nest", %{depth: 300}, pool: pool)
    assert e.category in [:python_error, :transport]
    assert {:ok, 2} = Snakepit.execute("add", %{a: 1, b: 1}, pool: pool)
  end
end
