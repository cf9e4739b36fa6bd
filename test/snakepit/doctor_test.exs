defmodule Snakepit.DoctorTest do
  # `mix snakepit.doctor` and the checks behind it, against real Python
  # interpreters and throwaway pools. The test env configures no pool, so
  # the task checks the bundled demo adapter.
  use ExUnit.Case, async: true
  import ExUnit.CaptureIO
  import ExUnit.CaptureLog

  alias Snakepit.Doctor
  alias Snakepit.Doctor.Check
  alias Snakepit.TestPools

  @root Path.expand("../..", __DIR__)

  defp check(checks, name), do: Enum.find(checks, &(&1.name == name))
  defp checks_from(checks, name), do: Enum.drop_while(checks, &(&1.name != name))

  test "on this machine every required check passes, for the demo adapter" do
    notes = collect_notes()
    checks = Doctor.run(on_note: notes.put)

    refute Doctor.failed?(checks), inspect(Enum.filter(checks, &(&1.status == :error)))
    assert notes.get.() =~ "checking the bundled demo adapter"

    for name <- [
          "native library",
          "shepherd",
          "python",
          "python version",
          "snakepit_bridge",
          "adapter"
        ] do
      assert %Check{status: :ok} = check(checks, name), "#{name}: #{inspect(checks)}"
    end

    assert check(checks, "python version").detail =~
             ~r/^3\.\d+\.\d+ \(>= 3\.9 required\)(, runs \S+)?$/

    assert check(checks, "snakepit_bridge").detail =~ ~r/\(codec: (ormsgpack|msgpack)\)$/
    assert check(checks, "adapter").detail =~ "pool :demo: #{Doctor.demo_adapter()} loads"
    assert check(checks, "adapter").detail =~ ~r/ping ok, \d+ tools/
    # Optional ones are ok or warnings, never failures.
    assert check(checks, "numpy").status in [:ok, :warning]
    assert check(checks, "ormsgpack").status in [:ok, :warning]
  end

  test "a missing interpreter fails, says how to fix it, and skips the adapter" do
    checks = Doctor.run(python: "/nonexistent/python3")

    assert Doctor.failed?(checks)
    python = check(checks, "python")
    assert python.status == :error
    assert python.detail == "/nonexistent/python3 does not exist"
    assert python.hint =~ "pass --python the path of a Python >= 3.9, or install one"
    assert %Check{status: :skipped, detail: detail} = check(checks, "adapter")
    assert detail =~ "its Python is not usable"
  end

  test "a configured pool's missing :python names the pool and its option" do
    env = [pools: [ml: [adapter: "m.A", python: "no_such_python3_here"]]]
    checks = Doctor.run(app_env: env)

    assert %Check{status: :ok, detail: "config :snakepit: 1 pool :ml"} = check(checks, "config")
    python = check(checks, "python")
    assert python.status == :error
    assert python.detail =~ "no_such_python3_here was not found on the PATH"
    assert python.hint =~ "install Python >= 3.9"
    assert python.hint =~ "set the :python option of pool :ml"
    assert python.hint =~ ~s(config :snakepit, pools: [ml: [python: "/usr/bin/python3", ...]])
  end

  test "an interpreter that is too old fails with the required version" do
    dir = TestPools.tmp_dir("snakepit_doctor_old_python")
    fake = Path.join(dir, "python2")
    File.write!(fake, "#!/bin/sh\nprintf 'python\\t2.7.18\\t/usr/bin/python2\\n'\n")
    File.chmod!(fake, 0o755)

    checks = Doctor.run(python: fake)

    assert %Check{status: :error, detail: detail} = check(checks, "python version")
    assert detail == "#{fake} is Python 2.7.18: Snakepit needs >= 3.9"
    assert check(checks, "adapter").status == :skipped
  end

  test "an interpreter without a MessagePack codec fails with the pip command" do
    # The real Python without its site-packages (-S): stdlib only.
    dir = TestPools.tmp_dir("snakepit_doctor_no_site")
    bare = Path.join(dir, "python3")
    File.write!(bare, "#!/bin/sh\nexec #{System.find_executable("python3")} -S \"$@\"\n")
    File.chmod!(bare, 0o755)

    checks = Doctor.run(python: bare)

    assert %Check{status: :error, detail: detail, hint: hint} = check(checks, "snakepit_bridge")
    assert detail =~ "No module named 'msgpack'"
    assert hint =~ "#{bare} -m pip install -r "
    assert hint =~ "priv/python/requirements.txt"
    assert %Check{status: :error, detail: "not installed" <> _} = check(checks, "msgpack")
    assert %Check{status: :warning} = check(checks, "ormsgpack")
    assert %Check{status: :warning} = check(checks, "numpy")
    assert check(checks, "adapter").status == :skipped
  end

  test "each configured pool's adapter is started in a throwaway pool; a broken one shows the Python error" do
    python_dir = Path.join(@root, "test/support/python")

    env = [
      pools: [
        good: [adapter: "snakepit_test_adapters.TestAdapter", size: 4, python_path: [python_dir]],
        broken: [adapter: "snakepit_test_broken.Adapter", python_path: [python_dir]]
      ]
    ]

    notes = collect_notes()

    {checks, log} = with_log(fn -> Doctor.run(app_env: env, on_note: notes.put) end)

    # One Python environment for both: its checks are not repeated.
    assert Enum.count(checks, &(&1.name == "python")) == 1
    [good, broken] = Enum.filter(checks, &(&1.name == "adapter"))

    assert good.status == :ok

    assert good.detail =~
             "pool :good: snakepit_test_adapters.TestAdapter loads in a throwaway worker"

    assert broken.status == :error
    # The error names the configured pool, not the throwaway one.
    assert broken.detail =~ "pool :broken could not start its workers"
    assert broken.detail =~ "No module named 'snakepit_module_that_does_not_exist'"
    refute broken.detail =~ "snakepit_doctor_"
    assert broken.hint =~ "the adapter imports snakepit_module_that_does_not_exist"
    assert broken.hint =~ "To reproduce it outside Snakepit: PYTHONPATH=#{python_dir}:"
    assert broken.hint =~ "-c 'from snakepit_test_broken import Adapter; Adapter()'"
    assert broken.details =~ "Traceback"

    # The throwaway pools' own log messages are left out (the check has
    # the error), and no throwaway pool is left running.
    refute log =~ "snakepit_doctor_broken_"
    refute log =~ "snakepit_doctor_good_"

    left =
      for name <- Registry.select(Snakepit.Registry, [{{:"$1", :_, :_}, [], [:"$1"]}]),
          String.starts_with?("#{name}", ["snakepit_doctor_good_", "snakepit_doctor_broken_"]),
          do: name

    assert left == []
  end

  test "an adapter whose package is not on :python_path gets that as its fix" do
    checks = Doctor.run(pools: [nopath: [adapter: "snakepit_test_adapters.TestAdapter"]])

    assert %Check{status: :error} = adapter = check(checks, "adapter")
    assert adapter.detail =~ "No module named 'snakepit_test_adapters'"

    assert adapter.hint =~
             "put the directory that holds snakepit_test_adapters on pool :nopath's :python_path"
  end

  describe "a virtualenv as :python" do
    test "with msgpack visible: the venv is checked, then its interpreter, and the adapter runs" do
      {dir, _site} = TestPools.venv("snakepit_doctor_venv", system_site_packages: true)
      checks = Doctor.run(pools: [ml: [adapter: Doctor.demo_adapter(), python: dir]])

      refute Doctor.failed?(checks), inspect(Enum.filter(checks, &(&1.status == :error)))

      assert [%Check{name: "venv", status: :ok} = venv, %Check{name: "python"} | _] =
               checks_from(checks, "venv")

      assert venv.detail =~
               ~r"^#{dir}: a virtualenv \(Python 3\.\d+\.\d+, system site-packages\), runs bin/python$"

      assert check(checks, "python").detail == "#{dir} is #{dir}/bin/python"
      assert %Check{status: :ok} = check(checks, "msgpack")
      assert %Check{status: :ok} = check(checks, "adapter")
    end

    test "an interpreter inside a venv is checked as that venv" do
      {dir, _site} = TestPools.venv("snakepit_doctor_venv_bin", system_site_packages: true)
      checks = Doctor.run(python: Path.join(dir, "bin/python3"))

      assert %Check{status: :ok, detail: detail} = check(checks, "venv")
      assert detail =~ "#{dir}: a virtualenv"
      refute Doctor.failed?(checks)
    end

    test "without msgpack: the codec checks fail with the venv's own pip" do
      {dir, _site} = TestPools.venv("snakepit_doctor_venv_bare")
      checks = Doctor.run(python: dir)

      assert %Check{status: :ok} = check(checks, "venv")
      assert %Check{status: :error, detail: detail, hint: hint} = check(checks, "snakepit_bridge")
      assert detail =~ "No module named 'msgpack' (nor 'ormsgpack')"
      # TestPools.venv makes it --without-pip: pip is run as a module.
      assert hint =~
               "install a MessagePack codec for this Python: #{dir}/bin/python -m pip install msgpack"

      assert hint =~ "#{dir}/bin/python -m pip install "
      assert hint =~ "priv/python)"
      assert check(checks, "msgpack").status == :error
      assert check(checks, "msgpack").hint =~ "#{dir}/bin/python -m pip install msgpack"
      assert check(checks, "adapter").status == :skipped

      # With a bin/pip, that is what the fix runs.
      File.write!(Path.join(dir, "bin/pip"), "")
      checks = Doctor.run(python: dir)
      assert check(checks, "msgpack").hint =~ ~r"^#{dir}/bin/pip install msgpack \(or the bridge"
    end

    test "a directory that does not exist, or has no interpreter, fails with how to make one" do
      missing = Path.join(TestPools.tmp_dir("snakepit_doctor_no_venv"), ".venv")
      env = [pools: [ml: [adapter: "m.A", python: missing]]]
      checks = Doctor.run(app_env: env)

      assert %Check{status: :error, detail: detail, hint: hint} = check(checks, "venv")

      assert detail ==
               "#{missing} does not exist (expected an interpreter, or a virtualenv directory)"

      assert hint =~
               "create the virtualenv: python3 -m venv #{missing} && #{missing}/bin/pip install msgpack"

      assert hint =~ "set the :python option of pool :ml to"
      assert check(checks, "python") == nil
      assert check(checks, "adapter").status == :skipped

      File.mkdir_p!(missing)
      checks = Doctor.run(python: missing)
      assert %Check{status: :error, detail: detail, hint: hint} = check(checks, "venv")
      assert detail =~ "#{missing} is a directory without bin/python or bin/python3"
      assert hint =~ "make it a virtualenv: python3 -m venv #{missing}"
      assert hint =~ "pass --python"

      File.mkdir_p!(Path.join(missing, "bin"))
      File.ln_s!("/no/such/python3", Path.join(missing, "bin/python"))
      checks = Doctor.run(python: missing)
      assert %Check{status: :error, detail: detail, hint: hint} = check(checks, "venv")
      assert detail =~ "links to /no/such/python3, which does not exist"
      assert hint =~ "python3 -m venv --clear #{missing}"
    end
  end

  test "a refused config :snakepit fails, and the demo adapter is checked instead" do
    checks = Doctor.run(app_env: [max_retries: 3])

    assert %Check{status: :error, detail: detail, hint: hint} = check(checks, "config")
    assert detail =~ "unknown key in config :snakepit: :max_retries"
    assert hint =~ "Snakepit.Config"
    assert check(checks, "adapter").detail =~ "pool :demo"
  end

  describe "mix snakepit.doctor" do
    test "prints a line per check and passes" do
      output = capture_io(fn -> Mix.Task.rerun("snakepit.doctor", []) end)

      assert output =~ "Snakepit doctor: snakepit "
      assert output =~ "No pools in config :snakepit: checking the bundled demo adapter"
      assert output =~ ~r/✓ native library +\S+libsnakepit_nif\.so loaded/
      assert output =~ ~r/✓ python version +3\.\d+/
      assert output =~ ~r/✓ adapter +pool :demo: /
      assert output =~ "All required checks passed"
      refute output =~ "✗"
    end

    test "fails with the fix when the interpreter is missing" do
      output =
        capture_io(fn ->
          error =
            assert_raise Mix.Error, fn ->
              Mix.Task.rerun("snakepit.doctor", ["--python", "/nonexistent/python3"])
            end

          assert error.message == "snakepit.doctor: 1 required check failed (✗ above)"
        end)

      assert output =~ ~r/✗ python +\/nonexistent\/python3 does not exist/
      assert output =~ "fix: pass --python the path of a Python >= 3.9, or install one"
      assert output =~ ~r/- adapter +pool :demo: not checked/
    end

    @tag timeout: 120_000
    test "run by mix with python3 missing from the PATH: exit status 1 and the fix" do
      # A PATH with every program of ours except the Python interpreters.
      bin = TestPools.tmp_dir("snakepit_doctor_path")

      for dir <- String.split(System.get_env("PATH"), ":", trim: true),
          {:ok, files} <- [File.ls(dir)],
          file <- files,
          not String.starts_with?(file, "python"),
          not File.exists?(Path.join(bin, file)) do
        File.ln_s!(Path.join(dir, file), Path.join(bin, file))
      end

      {output, status} =
        System.cmd("mix", ["snakepit.doctor"],
          cd: @root,
          env: [{"PATH", bin}, {"MIX_ENV", "test"}],
          stderr_to_stdout: true
        )

      assert status == 1, output
      assert output =~ ~r/✗ python +python3 was not found on the PATH/
      assert output =~ "fix: install Python >= 3.9 as python3 on the PATH"
      assert output =~ "set your pools' :python to an interpreter"
      assert output =~ "** (Mix) snakepit.doctor: 1 required check failed"
    end
  end

  defp collect_notes do
    {:ok, agent} = Agent.start_link(fn -> [] end)

    %{
      put: fn note -> Agent.update(agent, &[note | &1]) end,
      get: fn -> agent |> Agent.get(& &1) |> Enum.reverse() |> Enum.join("\n") end
    }
  end
end
