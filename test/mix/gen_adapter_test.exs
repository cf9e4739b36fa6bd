defmodule Mix.Tasks.Snakepit.Gen.AdapterTest do
  # mix snakepit.gen.adapter in a fresh Mix app (made by `mix new`, with
  # {:snakepit, path: ...}), then what its next steps say: the generated
  # pytest passes, and a pool runs the adapter.
  #
  # The task runs in this BEAM (Mix.Task.rerun/2 in the app's directory),
  # not as `mix snakepit.gen.adapter` there: that would first compile
  # Snakepit as the app's dependency (packaging_test.exs does that once,
  # and it takes most of a minute). File.cd! changes the directory of the
  # whole VM, hence async: false.
  use ExUnit.Case, async: false
  import ExUnit.CaptureIO

  alias Snakepit.{Error, TestPools}

  @root Path.expand("../..", __DIR__)
  @priv_python Path.join(@root, "priv/python")

  setup_all do
    parent = TestPools.tmp_dir("snakepit_gen_adapter")
    {out, 0} = System.cmd("mix", ["new", "demo_app"], cd: parent, stderr_to_stdout: true)
    app = Path.join(parent, "demo_app")
    assert File.exists?(Path.join(app, "mix.exs")), out

    mix_exs = Path.join(app, "mix.exs")
    deps = ~s|[{:snakepit, path: #{inspect(@root)}}]|

    File.write!(
      mix_exs,
      String.replace(File.read!(mix_exs), ~r/defp deps do\n.*?\n  end/s, "defp deps, do: #{deps}")
    )

    output = gen(app, ["demo_x"])
    %{app: app, dir: Path.join(app, "priv/python/demo_x"), output: output}
  end

  defp gen(app, args),
    do: capture_io(fn -> File.cd!(app, fn -> Mix.Task.rerun("snakepit.gen.adapter", args) end) end)

  test "writes the adapter, its tests and requirements, and prints the next steps", c do
    assert File.ls!(c.dir) |> Enum.sort() ==
             ~w(__init__.py adapter.py requirements.txt test_adapter.py)

    assert File.read!(Path.join(c.dir, "adapter.py")) =~ "class DemoXAdapter(BaseAdapter):"
    requirements = File.read!(Path.join(c.dir, "requirements.txt"))
    assert requirements =~ ~r/^msgpack>=1\.0$/m
    assert requirements =~ "pip install #{@priv_python} -r priv/python/demo_x/requirements.txt"

    for line <- [
          "* creating priv/python/demo_x/adapter.py",
          "python3 -m venv .venv",
          ".venv/bin/pip install #{@priv_python} -r priv/python/demo_x/requirements.txt",
          ".venv/bin/python -m pytest priv/python/demo_x",
          ~s(adapter: "demo_x.adapter.DemoXAdapter"),
          ~s{python: Path.expand(".venv")},
          ~s{python_path: [Application.app_dir(:snakepit, "priv/python")]}
        ] do
      assert c.output =~ line
    end
  end

  test "the generated pytest passes, and ruff and mypy --strict accept the code", c do
    env = [{"PYTHONPATH", @priv_python}]

    {out, status} =
      System.cmd("python3", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "priv/python/demo_x"],
        cd: c.app,
        env: env,
        stderr_to_stdout: true
      )

    assert status == 0, out
    assert out =~ "5 passed"

    {out, status} =
      System.cmd(
        "python3",
        [
          "-m",
          "ruff",
          "check",
          "--isolated",
          "--no-cache",
          "--select",
          "E,W,F,B,I,C4,PIE,UP",
          "priv/python"
        ],
        cd: c.app,
        stderr_to_stdout: true
      )

    assert status == 0, out

    {out, status} =
      System.cmd("python3", ["-m", "mypy", "--strict", "--cache-dir", "/dev/null", "demo_x"],
        cd: Path.join(c.app, "priv/python"),
        env: [{"MYPYPATH", @priv_python}],
        stderr_to_stdout: true
      )

    assert status == 0, out
  end

  test "a pool runs the generated adapter", c do
    name = :"gen_demo_x_#{System.unique_integer([:positive])}"

    start_supervised!(
      {Snakepit.Pool,
       name: name,
       size: 1,
       adapter: "demo_x.adapter.DemoXAdapter",
       python_path: [Path.join(c.app, "priv/python")]}
    )

    :ok = Snakepit.await_ready(name, 30_000)

    assert Snakepit.execute("greet", %{name: "Ada"}, pool: name) == {:ok, "Hello, Ada!"}
    assert Snakepit.stream("countdown", %{n: 3}, pool: name) |> Enum.to_list() == [3, 2, 1]

    assert {:error, %Error{category: :python_error} = e} =
             Snakepit.execute("greet", %{name: ""}, pool: name)

    assert e.details.code == "empty_name"
  end

  test "existing files are not overwritten without --force", c do
    adapter = Path.join(c.dir, "adapter.py")
    File.write!(adapter, "# mine\n")

    error = assert_raise Mix.Error, fn -> gen(c.app, ["demo_x"]) end

    assert error.message =~
             "not overwriting priv/python/demo_x/__init__.py, priv/python/demo_x/adapter.py"

    assert error.message =~ "(use --force to overwrite)"
    assert File.read!(adapter) == "# mine\n"

    gen(c.app, ["demo_x", "--force"])
    assert File.read!(adapter) =~ "class DemoXAdapter"
  end

  test "--path puts the package elsewhere, and the next steps follow", c do
    output = gen(c.app, ["other_tools", "--path", "python"])
    assert File.exists?(Path.join(c.app, "python/other_tools/adapter.py"))
    assert output =~ ~s(adapter: "other_tools.adapter.OtherToolsAdapter")
    assert output =~ ~s{python_path: [Path.expand("python")]}
  end

  test "NAME must be a snake_case Python identifier that shadows no module", c do
    for {name, message} <- [
          {"DemoX", "is not a snake_case Python identifier"},
          {"demo-x", "is not a snake_case Python identifier"},
          {"1demo", "is not a snake_case Python identifier"},
          {"class", "is a Python keyword"},
          {"json", "would shadow it"},
          {"snakepit_bridge", "would shadow it"}
        ] do
      error = assert_raise Mix.Error, fn -> gen(c.app, [name]) end
      assert error.message =~ message, name
      refute File.exists?(Path.join(c.app, "priv/python/#{name}"))
    end

    assert_raise Mix.Error, ~r/usage: mix snakepit.gen.adapter NAME/, fn -> gen(c.app, []) end
  end
end
