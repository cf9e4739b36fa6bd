defmodule Snakepit.Adversarial.FdExhaustionTest do
  # A BEAM out of file descriptors still delivers a call that must go
  # through the worker's writer thread (larger than a pipe buffer), and its
  # caller gets its answer. Runs a separate `elixir` with a low `ulimit -n`.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  @python_dir Path.expand("../support/python", __DIR__)

  test "a large call is answered while the BEAM has no descriptor left" do
    {_lib, ebin} = snakepit_app("snakepit_fd_exhaustion", :real_priv)

    script = """
    {:ok, _} = Application.ensure_all_started(:snakepit)
    {:ok, _} =
      Snakepit.Pool.start_link(name: :fds, size: 1, adapter: "snakepit_test_adapters.TestAdapter",
        python_path: [#{inspect(@python_dir)}])
    :ok = Snakepit.await_ready(:fds, 30_000)
    big = :binary.copy("x", 8_000_000)
    # Load every module used below now: the code server cannot open files later.
    {:ok, ^big} = Snakepit.execute("echo", %{value: big}, pool: :fds)
    IO.puts("warm: \#{:ok} \#{1} " <> inspect({:error, [1]}, limit: 5, printable_limit: 80))
    held = Stream.repeatedly(fn -> File.open("/dev/null") end) |> Enum.take_while(&match?({:ok, _}, &1))
    {:error, why} = File.open("/dev/null")
    IO.puts("out of descriptors: \#{why} after \#{length(held)}")
    case Snakepit.execute("echo", %{value: big}, pool: :fds, timeout: 20_000) do
      {:ok, ^big} -> IO.puts("answered")
      other -> IO.puts("answer: " <> inspect(other, limit: 5, printable_limit: 80))
    end
    """

    {out, 0} =
      System.cmd("sh", ["-c", "ulimit -n 200 && exec elixir -pa \"$0\" -e \"$1\"", ebin, script],
        stderr_to_stdout: true
      )

    assert out =~ "out of descriptors: emfile"
    assert out =~ "answered"
  end
end
