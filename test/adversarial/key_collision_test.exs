defmodule Snakepit.Adversarial.KeyCollisionTest do
  # Map keys that are distinct in Elixir but one key in Python (`:x` and
  # "x", 1 and 1.0, true and 1) are refused with a :validation error naming
  # where they are, instead of Python silently keeping the last.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error

  setup_all do
    name = :"key_collision_#{System.unique_integer([:positive])}"
    opts = opts(name: name, size: 1)
    {:ok, sup} = Supervisor.start_link([{Snakepit.Pool, opts}], strategy: :one_for_one)
    :ok = Snakepit.await_ready(name, 30_000)
    on_exit(fn -> Process.exit(sup, :shutdown) end)
    %{pool: name}
  end

  for {label, value, quoted} <- [
        {"an atom and a string", quote(do: %{:x => 1, "x" => 2}), ~s(:x and "x")},
        {"an integer and an equal float", quote(do: %{1 => "a", 1.0 => "b"}), "1 and 1.0"},
        {"true and 1", quote(do: %{true => "a", 1 => "b"}), "1 and true"},
        {"false and 0.0", quote(do: %{false => "a", 0.0 => "b"}), "0.0 and false"}
      ] do
    test "#{label} as keys of one map are refused", %{pool: pool} do
      assert {:error, %Error{category: :validation} = e} =
               Snakepit.execute("echo", %{value: %{"inner" => unquote(value)}}, pool: pool)

      assert e.message =~ "which are one key in Python"
      assert e.message =~ unquote(quoted)
      assert e.details.path == ~s(args[:value]["inner"])
    end
  end

  test "top-level arguments that name one keyword twice are refused", %{pool: pool} do
    assert {:error, %Error{category: :validation} = e} =
             Snakepit.execute("echo", %{:value => 1, "value" => 2}, pool: pool)

    assert e.message =~ ~s(:value and "value")
    assert Snakepit.get_stats(pool).validation_errors >= 1
  end

  test "keys Python keeps apart still arrive apart", %{pool: pool} do
    value = %{1 => "int", 2.5 => "float", "1" => "text", <<255>> => "bytes", nil => "none"}
    assert Snakepit.execute("echo", %{value: value}, pool: pool) == {:ok, value}
  end
end
