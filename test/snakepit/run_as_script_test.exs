defmodule Snakepit.RunAsScriptTest do
  # run_as_script/2 and the application's reading of `config :snakepit`
  # start and stop the :snakepit application, which would take down the
  # registry of every pool of this VM: they run in a separate `elixir` VM,
  # with Snakepit's compiled code (see TestPools.snakepit_app/2).
  use ExUnit.Case, async: true

  import Snakepit.TestPools, only: [snakepit_app: 2, tmp_dir: 1]

  alias Snakepit.Error

  @python_dir Path.expand("../support/python", __DIR__)

  # Runs `body` in a fresh VM after defining `run.(env, opts)`, which sets the
  # application env to `env`, calls run_as_script/2 with a fun that records
  # that it ran, and returns {result, ran?, snakepit still started?}. The
  # script's `results` come back through a file.
  defp in_vm(name, body) do
    {_lib, ebin} = snakepit_app(name, :real_priv)
    out = Path.join(tmp_dir(name <> "_out"), "results")

    script = """
    :ok = Application.load(:snakepit)

    run = fn env, opts ->
      for {key, _} <- Application.get_all_env(:snakepit), do: Application.delete_env(:snakepit, key)
      for {key, value} <- env, do: Application.put_env(:snakepit, key, value)
      me = self()
      result = Snakepit.run_as_script(fn -> send(me, :ran); Snakepit.execute("add", %{a: 1, b: 2}) end, opts)
      ran? = receive do :ran -> true after 0 -> false end
      {result, ran?, List.keymember?(Application.started_applications(), :snakepit, 0)}
    end

    #{body}
    File.write!(#{inspect(out)}, :erlang.term_to_binary(results))
    """

    {output, status} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
    assert status == 0, output
    {:erlang.binary_to_term(File.read!(out)), output}
  end

  @tag timeout: 120_000
  test "a pool that cannot start or is not ready in time is an error, and fun does not run" do
    log = Path.join(tmp_dir("start_log"), "log")

    {results, output} =
      in_vm("run_as_script_errors", """
      broken = [adapter: "snakepit_test_broken.Adapter", python_path: [#{inspect(@python_dir)}], size: 1]

      # every worker takes 50 ms more to start, one at a time: the second is
      # never ready 1 ms after the first
      slow = [adapter: "snakepit_test_adapters.TestAdapter", python_path: [#{inspect(@python_dir)}],
              size: 2, startup_batch_size: 1, env: %{"SNAKEPIT_TEST_START_LOG" => #{inspect(log)}}]

      results = %{
        broken: run.([pools: [broken: broken]], []),
        tiny_startup: run.([pools: [tiny: [startup_timeout: 1] ++ broken]], []),
        slow: run.([pools: [slow: slow]], timeout: 1),
        bad_python: run.([pools: [nopy: [adapter: "m.A", python: "python_does_not_exist_3"]]], []),
        bad_config: run.([adapter_module: MyApp.Adapter, pool_size: 2], []),
        unknown_key: run.([pools: [], max_retries: 3], []),
        flat: run.([adapter_module: "snakepit_bridge.examples.demo.DemoAdapter", pool_size: 1,
                    worker_timeout: 10_000], []),
        disabled: run.([adapter_module: "m.A", pooling_enabled: false], [])
      }
      """)

    assert {{:error, %Error{category: :pool} = e}, false, false} = results.broken, output
    assert e.details.pool == :broken
    assert e.message =~ "pool :broken could not start its workers"
    assert e.message =~ "No module named 'snakepit_module_that_does_not_exist'"

    assert {{:error, %Error{category: :pool} = e}, false, false} = results.tiny_startup
    assert e.details.pool == :tiny
    assert e.message =~ "pool :tiny could not start"

    assert {{:error, %Error{category: :timeout} = e}, false, false} = results.slow
    assert e.details.pool == :slow
    assert e.message =~ "pool :slow was not ready within 1 ms"

    assert {{:error, %Error{category: :validation} = e}, false, false} = results.bad_python
    assert e.details == %{pool: :nopy, option: :python}
    assert e.message =~ ~s(pool :nopy: invalid pool option :python: "python_does_not_exist_3")

    assert {{:error, %Error{category: :validation} = e}, false, false} = results.bad_config
    assert e.details == %{key: :adapter_module}
    assert e.message =~ "is an Elixir module"

    assert {{:error, %Error{category: :validation} = e}, false, false} = results.unknown_key
    assert e.details.unknown_keys == [:max_retries]

    # the design's flat keys start a :default pool that answers
    assert results.flat == {{:ok, 3}, true, false}

    # no pool: the call has nothing to go to
    assert {{:error, %Error{category: :pool, details: %{pool: :default}}}, true, false} =
             results.disabled

    # the refused configuration was logged readably, newlines and all
    assert output =~ "[snakepit] not started: invalid configuration:\nunknown key in config"
  end

  @tag timeout: 120_000
  test "with halt: true, a pool that cannot start halts the VM with status 1, fun not run" do
    {_lib, ebin} = snakepit_app("run_as_script_halt", :real_priv)

    script = """
    Application.put_env(:snakepit, :pools,
      broken: [adapter: "snakepit_test_broken.Adapter", python_path: [#{inspect(@python_dir)}], size: 1])
    Snakepit.run_as_script(fn -> IO.puts("fun ran") end, halt: true)
    IO.puts("run_as_script returned")
    """

    {output, status} = System.cmd("elixir", ["-pa", ebin, "-e", script], stderr_to_stdout: true)
    assert status == 1, output
    assert output =~ "Snakepit.run_as_script/2: [pool] pool :broken could not start"
    refute output =~ "fun ran"
    refute output =~ "run_as_script returned"
  end
end
